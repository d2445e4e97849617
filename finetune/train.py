"""Fine-tuning: a (LAFS-pretrained) encoder becomes a face recogniser with a margin head and regularisers.

    accelerate launch finetune/train.py --config configs/finetune/<name>.yaml [key=value ...]
    python finetune/train.py ...             (the same, one process)

Top-level keys as in pretraining: ``output_dir``, ``max_steps``, ``resume`` (``auto`` | a checkpoint | ""), plus
``init``: a pretraining run directory or an exported encoder folder to start from ("" trains from scratch).
The run directory ends up holding config.yaml, few_shot.csv (with ``data.shots``), checkpoints/, log.jsonl,
tensorboard/, encoder/ (the final encoder), landmark_predictor/ (when one is trained) and, with validation sets,
best/ (the encoder of the best mean validation accuracy, with best.json). The task is
`finetune.task.FinetuneTask`; the loop is `lafs.engine.fit`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    # `accelerate launch finetune/train.py` runs this file as a script: put the repository root first on the path.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from finetune.task import FinetuneConfig, FinetuneTask
from lafs.cli import entry_point
from lafs.config import parse_cli
from lafs.engine import fit


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_cli(argv, FinetuneConfig, description=__doc__.split("\n\n")[0])
    fit(cfg, FinetuneTask(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
