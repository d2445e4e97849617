"""optim.lr=1e9 at the entry points: the run stops with one line and leaves no NaN weights behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from finetune.train import main as finetune
from lafs.pretrain import main as pretrain
from tests.finetune.test_train import DEMO as FINETUNE_DEMO
from tests.lafs.test_pretrain import TINY as PRETRAIN_DEMO


@pytest.mark.parametrize(
    ("main", "args"),
    [(pretrain, [*PRETRAIN_DEMO, "max_steps=6"]), (finetune, [*FINETUNE_DEMO, "max_steps=6", "optim.epochs=8"])],
    ids=["pretrain", "finetune"],
)
def test_a_diverging_run_is_one_line_and_writes_no_nan(
    main: object, args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert main([*args, "optim.lr=1e9", "max_nonfinite_steps=1", f"output_dir={out}"]) == 2  # type: ignore[operator]
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: step ") and ("not finite" in error) and "optim.lr" in error
    assert not (out / "encoder").exists()  # no export of a diverged run
    for weights in out.glob("checkpoints/*/*.safetensors"):  # whatever was checkpointed is finite
        assert all(np.isfinite(array).all() for array in load_file(weights).values() if array.dtype.kind == "f")
