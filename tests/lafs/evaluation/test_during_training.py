"""Verification during training: the eval_bins checks every stage runs at start-up."""

import pytest

from lafs.errors import ConfigError
from lafs.evaluation.during_training import check_eval_bins


def test_validation_sets_refuse_missing_files_and_shared_names(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "lfw.bin").write_bytes(b"")
    check_eval_bins([tmp_path / "a" / "lfw.bin"])
    with pytest.raises(ConfigError, match="eval_bins: no such file"):
        check_eval_bins([tmp_path / "c.bin"])
    with pytest.raises(ConfigError, match="two sets share the name 'lfw'"):
        check_eval_bins([tmp_path / "a" / "lfw.bin", tmp_path / "b" / "lfw.bin"])
