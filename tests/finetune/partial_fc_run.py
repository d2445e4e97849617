"""Fine-tuning (`finetune/train.py`'s arguments) that also writes each process's Partial FC shard and its optimiser
state as they stand once the run has started or resumed: ``loaded_rank<r>.safetensors`` in the run directory.

    accelerate launch tests/finetune/partial_fc_run.py --config ... head.partial_fc.enabled=true ...

The checkpoint tests (test_train.py) compare these files with the shards a checkpoint holds.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[2])  # run as a script: the repository root first

from safetensors.torch import save_file

from finetune.partial_fc import PartialFC
from finetune.task import FinetuneConfig, FinetuneTask
from lafs.config import parse_cli
from lafs.engine import RunContext, fit


class ShardDumpingTask(FinetuneTask):
    def setup(self, run: RunContext) -> None:
        super().setup(run)  # after any resume: the shard is what the checkpoint gave this process
        head = self.objective.head
        assert isinstance(head, PartialFC)
        state = {name: value.detach().cpu().contiguous() for name, value in head.process_state().items()}
        self.cfg.output_dir.mkdir(parents=True, exist_ok=True)  # (the main process may not have made it yet)
        save_file(state, str(self.cfg.output_dir / f"loaded_rank{run.accelerator.process_index}.safetensors"))


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_cli(argv, FinetuneConfig)
    fit(cfg, ShardDumpingTask(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
