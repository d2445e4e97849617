"""The combined objective: named terms, lambda = 0 bit-identity, requirement checks, state updates."""

import logging

import pytest
import torch

from finetune.heads import MarginHead, margin_cross_entropy
from finetune.objective import Objective, build_objective
from finetune.regularisers import RegularisersConfig
from lafs.engine import OptimConfig
from lafs.errors import ConfigError
from lafs.schedules import WeightSchedule

CLASSES, DIM, BATCH = 5, 8, 6


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(BATCH, DIM, generator=generator, dtype=torch.float64, requires_grad=True)
    return features, torch.tensor([0, 1, 2, 3, 4, 0])


def all_enabled(weight: float) -> RegularisersConfig:
    cfg = RegularisersConfig()
    for name, options in vars(cfg).items():
        if name == "landmark":
            continue
        options.enabled = True
        options.weight = WeightSchedule(value=weight)
    return cfg  # coreface: two dropout views, and the contrast, from the start (or never, with weight 0)


def objective(cfg: RegularisersConfig) -> Objective:
    torch.manual_seed(0)
    head = MarginHead(CLASSES, DIM, margins=(1.0, 0.5, 0.0)).double()
    optim = OptimConfig()
    return build_objective(head, cfg, num_classes=CLASSES, embed_dim=DIM, num_samples=32, optim=optim).double().eval()


def test_terms_dict_and_weighted_sum():
    obj = objective(all_enabled(0.5))
    features, labels = inputs()
    terms = obj(features, labels, indices=torch.arange(BATCH), epoch=10.0)
    assert set(terms) >= {"margin_loss", "unpg_loss", "intraloss_loss", "coreface_loss", "loss"}
    parts = sum(value for name, value in terms.items() if name not in ("loss", "margin_loss"))
    assert terms["loss"].item() == pytest.approx(terms["margin_loss"].item() + 0.5 * parts.item())
    assert all(name == "loss" or name.endswith("_loss") for name in terms)
    assert obj.lambdas(10.0) == {name: 0.5 for name in ("unpg", "coreface", "intraloss", "cluster")}


def test_zero_weights_give_the_base_loss_bit_for_bit():
    features, labels = inputs()
    base = objective(RegularisersConfig())
    expected = base(features, labels)["loss"]
    (grad_expected,) = torch.autograd.grad(expected, features)
    off = objective(all_enabled(0.0))
    terms = off(features, labels, indices=torch.arange(BATCH), epoch=10.0)
    (grad,) = torch.autograd.grad(terms["loss"], features)
    assert set(terms) == {"margin_loss", "loss"}
    assert torch.equal(terms["loss"], expected) and torch.equal(grad, grad_expected)
    direct = margin_cross_entropy(base.head(features, labels), labels, None)
    assert torch.equal(direct, expected)


def test_missing_requirements_fail_on_the_first_step():
    cfg = RegularisersConfig()
    cfg.landmark.enabled = True
    with pytest.raises(ConfigError, match=r"regularisers\.landmark needs landmarks, reference_landmarks"):
        objective(cfg)(*inputs())
    cfg = RegularisersConfig()
    cfg.cluster.enabled = True
    with pytest.raises(ConfigError, match=r"regularisers\.cluster needs indices"):
        objective(cfg)(*inputs())


def test_update_feeds_state_with_detached_tensors():
    cfg = RegularisersConfig()
    cfg.cluster.enabled = True
    obj = objective(cfg)
    features, labels = inputs()
    terms = obj(features, labels, indices=torch.arange(BATCH) + 3)
    terms["loss"].backward()
    obj.update()
    cluster = obj.regularisers["cluster"]
    filled = [name for name, buffer in cluster.named_buffers() if buffer.dtype == torch.bool and buffer.ndim == 1]
    assert filled, "the cluster regulariser keeps a filled mask for its memory bank"
    assert any(getattr(cluster, name)[3 : 3 + BATCH].all() for name in filled)
    obj.update()  # a second call without a new step is a no-op


def test_weights_in_the_run_epochs_are_logged_once(caplog):
    """build_objective converts every weight to the run's epochs; each one that changed is logged."""
    cfg = RegularisersConfig()
    cfg.landmark.enabled = cfg.coreface.enabled = cfg.intraloss.enabled = True
    cfg.intraloss.weight = WeightSchedule(kind="start_at", value=1.0, start_epoch=0.5, unit="fraction")
    head = MarginHead(CLASSES, DIM)
    with caplog.at_level(logging.INFO, logger="lafs.finetune"):
        optim = OptimConfig(epochs=17, schedules="relative")
        obj = build_objective(head, cfg, num_classes=CLASSES, embed_dim=DIM, num_samples=32, optim=optim)
    assert obj.weights["landmark"].boundaries == [4.0, 7.0, 10.5, 14.0]
    assert obj.weights["coreface"].start_epoch == pytest.approx(7 * 17 / 24)
    assert obj.weights["intraloss"].start_epoch == 8.5
    assert obj.regularisers["coreface"].phase2_epoch == pytest.approx(7 * 17 / 24)
    lines = [r.getMessage() for r in caplog.records]
    landmark = "regularisers.landmark.weight: boundaries [8, 14, 21, 28] (34 epochs) -> boundaries [4, 7, 10.5, 14]"
    intraloss = "regularisers.intraloss.weight: start_epoch 0.5 (fractions of the run) -> start_epoch 8.5"
    assert len(lines) == 3 and f"{landmark} (this run's 17 epochs, optim.schedules=relative)" in lines
    assert sum(line.startswith(intraloss) for line in lines) == 1
