"""Verification during training: the eval_bins checks every stage runs at start-up."""

import numpy as np
import pytest

from lafs.data.pairs import write_bin
from lafs.errors import ConfigError
from lafs.evaluation.during_training import check_eval_bins


def test_validation_sets_refuse_missing_files_shared_names_and_files_of_no_pairs(tmp_path):
    grey = np.full((16, 16, 3), 127, np.uint8)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_bin(tmp_path / folder / "lfw.bin", [(grey, grey)], [True])
    check_eval_bins([tmp_path / "a" / "lfw.bin"])
    with pytest.raises(ConfigError, match="eval_bins: no such file"):
        check_eval_bins([tmp_path / "c.bin"])
    with pytest.raises(ConfigError, match="two sets share the name 'lfw'"):
        check_eval_bins([tmp_path / "a" / "lfw.bin", tmp_path / "b" / "lfw.bin"])
    (tmp_path / "junk.bin").write_text("not a pair set\n")
    with pytest.raises(ConfigError, match=r"^eval_bins: .*junk.bin: not a readable pickle"):
        check_eval_bins([tmp_path / "a" / "lfw.bin", tmp_path / "junk.bin"])
