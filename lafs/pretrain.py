"""LAFS self-supervised pretraining: DINO self-distillation over landmark-token views.

    accelerate launch lafs/pretrain.py --config configs/pretrain/demo.yaml [key=value ...]
    python lafs/pretrain.py ...              (the same, one process)

The same file runs on a laptop CPU, one GPU, several GPUs or nodes. Top-level keys every run understands:
``output_dir`` (the run directory), ``max_steps`` (stop after N optimiser steps; schedules still span all epochs)
and ``resume`` (``auto``: the newest checkpoint in the run directory; a path; or empty for a fresh start).
The run directory ends up holding config.yaml, checkpoints/, log.jsonl, tensorboard/ and encoder/ (the teacher
backbone as a stand-alone encoder). The task is `lafs.tasks.pretrain.PretrainTask`; the loop is `lafs.engine.fit`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    # `accelerate launch lafs/pretrain.py` runs this file as a script, which puts lafs/ itself first on the path,
    # where lafs/data, lafs/config.py ... would shadow top-level modules: put the repository root there instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from lafs.cli import entry_point
from lafs.config import parse_cli
from lafs.engine import fit
from lafs.tasks.pretrain import PretrainConfig, PretrainTask


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_cli(argv, PretrainConfig, description=__doc__.split("\n\n")[0])
    fit(cfg, PretrainTask(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
