"""The shipped accelerate configs launch without accelerate's "values were not passed" warning."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.launch import _validate_launch_command, launch_command_parser

CONFIGS = sorted((Path(__file__).parents[3] / "configs" / "accelerate").glob("*.yaml"))
WARNING = "were not passed to `accelerate launch`"


def _launch_warnings(caplog: pytest.LogCaptureFixture, *options: str) -> str:
    # What `accelerate launch [options] lafs/pretrain.py` logs while it settles its arguments (nothing is started).
    caplog.clear()
    with caplog.at_level("WARNING"):
        _validate_launch_command(launch_command_parser().parse_args([*options, "lafs/pretrain.py"]))
    return caplog.text


def test_a_launch_without_a_config_warns_so_we_ship_them(caplog: pytest.LogCaptureFixture) -> None:
    assert "`--num_processes` was set to a value of `0`" in _launch_warnings(caplog)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_launch_without_warnings(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert WARNING not in _launch_warnings(caplog, "--config_file", str(path))
