"""The documentation: the site builds offline without a warning, the README stays short and self-contained."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_the_site_builds_without_warnings(tmp_path: Path) -> None:
    pytest.importorskip("material", reason="MkDocs Material is a dev dependency (pip install -e '.[dev]')")
    mkdocs = Path(sys.executable).with_name("mkdocs")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr
    assert (tmp_path / "site" / "cpu-recipe" / "index.html").is_file()


def test_the_readme_is_short_and_needs_nothing_outside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert "../shared" not in page.read_text(), page


def test_the_architecture_pages_example_task_trains_checkpoints_and_resumes(tmp_path: Path) -> None:
    """The fourth task of docs/architecture.md, run as the page writes it, on a few synthetic faces."""
    from lafs.data.synthetic import SyntheticFacesConfig
    from lafs.engine import fit

    page = (ROOT / "docs" / "architecture.md").read_text()
    example = re.findall(r"```python\n(.*?)```", page, re.S)[0]
    namespace: dict[str, object] = {"__name__": "architecture_example"}
    # dont_inherit: not this file's "from __future__ import annotations", which the page does not have
    exec(compile(example, "docs/architecture.md", "exec", dont_inherit=True), namespace)
    config_class, task_class = namespace["ProbeConfig"], namespace["LinearProbe"]

    def run(max_steps: int) -> None:
        cfg = config_class(output_dir=tmp_path / "probe", max_steps=max_steps, num_workers=0, checkpoint_every=2)
        cfg.synthetic = SyntheticFacesConfig(num_identities=4, images_per_identity=4)
        cfg.optim.batch_size, cfg.optim.epochs = 4, 3
        fit(cfg, task_class(cfg))

    run(2)
    run(4)  # continues from the step-2 checkpoint
    log = (tmp_path / "probe" / "log.jsonl").read_text()
    assert '"step": 4' in log and (tmp_path / "probe" / "checkpoints").is_dir()
