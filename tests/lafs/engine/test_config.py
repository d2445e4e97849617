"""The engine's OptimConfig: the optim.schedules switch and the warm-up check it changes."""

import pytest

from lafs.engine import OptimConfig
from lafs.errors import ConfigError


def test_stretch_is_one_unless_relative():
    assert OptimConfig(epochs=200).stretch(41) == 1.0
    assert OptimConfig(epochs=200, schedules="relative").stretch(41) == pytest.approx(200 / 41)
    assert OptimConfig(epochs=17, schedules="relative").stretch(34) == 0.5


def test_warmup_bound_follows_the_switch():
    """As written, a warm-up must fit the run; relative, it must fit the recipe it is written for."""
    rates = {"lr": 1e-3, "min_lr": 0.0, "decays": {}}
    OptimConfig(epochs=12).check_recipe(5, **rates, recipe_epochs=34)
    with pytest.raises(ConfigError, match=r"^optim\.warmup_epochs must lie in \[0, optim\.epochs\] = \[0, 4\]"):
        OptimConfig(epochs=4).check_recipe(5, **rates, recipe_epochs=34)
    OptimConfig(epochs=4, schedules="relative").check_recipe(5, **rates, recipe_epochs=34)  # 5 / 34 of 4 epochs
    with pytest.raises(ConfigError, match=r"the recipe's epochs \(optim\.schedules=relative\)\] = \[0, 34\], got 35"):
        OptimConfig(epochs=400, schedules="relative").check_recipe(35, **rates, recipe_epochs=34)
    # A stage that does not stretch its warm-up (no recipe_epochs) is checked against the run as before.
    with pytest.raises(ConfigError, match=r"optim\.epochs\] = \[0, 4\]"):
        OptimConfig(epochs=4, schedules="relative").check_recipe(5, **rates)


def test_unknown_switch_is_one_line():
    with pytest.raises(ConfigError, match=r"^optim\.schedules must be epochs or relative, got 'fraction'$"):
        OptimConfig(schedules="fraction").validate()  # type: ignore[arg-type]


def test_resume_accepts_keys_added_since_with_their_defaults(tmp_path):
    """A run saved before a key existed resumes while the key holds its default; a real change still stops it."""
    import yaml

    from finetune.task import FinetuneConfig
    from lafs.config import config_to_dict
    from lafs.engine.config import check_resumed_config

    saved = config_to_dict(FinetuneConfig())
    del saved["regularisers"]["coreface"]["weight"]["unit"]  # a key added to a fixed section since
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    check_resumed_config(FinetuneConfig(), tmp_path, ("regularisers",))
    changed = FinetuneConfig()
    changed.regularisers.coreface.weight.unit = "fraction"
    with pytest.raises(ConfigError, match=r"^resuming .* with a different regularisers: regularisers\.coreface"):
        check_resumed_config(changed, tmp_path, ("regularisers",))


def test_resume_may_switch_decoding_into_memory_but_not_the_data(tmp_path):
    import yaml

    from finetune.task import FinetuneConfig
    from lafs.config import config_to_dict
    from lafs.engine.config import check_resumed_config

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config_to_dict(FinetuneConfig())))
    faster = FinetuneConfig()
    faster.data.in_memory = True  # how the images are read, not what is learned
    check_resumed_config(faster, tmp_path, ("data",))
    faster.data.image_size = 64
    with pytest.raises(ConfigError, match=r"with a different data: data\.image_size 112 -> 64"):
        check_resumed_config(faster, tmp_path, ("data",))
