"""IntraLoss (docs/losses.md section 6): the target-angle term, its non-vanishing gradient, the weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from finetune.context import LossContext
from finetune.heads import MarginHead
from finetune.regularisers.intraloss import (
    IntraLoss,
    IntraLossConfig,
    anisotropy_weights,
    build_intraloss,
    target_angles,
)
from lafs.errors import ConfigError
from lafs.registry import REGULARISERS
from lafs.schedules import WeightSchedule


def ctx_from_cosines(cosines: torch.Tensor, labels: torch.Tensor, head: MarginHead) -> LossContext:
    """A context from cosines (V, B, C) directly (the embeddings are not used by IntraLoss)."""
    v, b, _ = cosines.shape
    return LossContext(
        features=torch.zeros(b, 2, dtype=cosines.dtype),
        embeddings=torch.zeros(v, b, 2, dtype=cosines.dtype),
        labels=labels,
        cosines=cosines,
        logits=head.logits(cosines, labels),
        head=head,
    )


def ctx_from_embeddings(embeddings: torch.Tensor, labels: torch.Tensor, head: MarginHead) -> LossContext:
    """A one-view context as the objective builds it from embeddings (B, d)."""
    return LossContext.from_embeddings(head, embeddings, embeddings[None], labels)


def arcface(scale: float = 64.0) -> MarginHead:
    return MarginHead(3, 2, scale=scale, margins=(1.0, 0.5, 0.0)).double()


# -- spec 6(g) 1: lambda = 0 reduces to the base loss ------------------------------------------------------------


def test_lambda_zero_is_the_base_loss() -> None:
    cos = torch.tensor([[[0.8, 0.3, -0.1], [0.2, 0.5, 0.1]]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1])
    ctx = ctx_from_cosines(cos, labels, arcface())
    base = F.cross_entropy(ctx.logits[0], labels)
    total = base + 0.0 * IntraLoss()(ctx)["intraloss_loss"]
    assert torch.equal(total, base)
    g_total = torch.autograd.grad(total, cos, retain_graph=True)[0]
    assert torch.equal(g_total, torch.autograd.grad(base, cos)[0])


# -- spec 6(g) 2 and 4: hand values, the non-vanishing gradient ------------------------------------------------------


def test_hand_values_and_gradient() -> None:
    cos = torch.tensor([[[0.8, 0.3, -0.1]]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0])
    ctx = ctx_from_cosines(cos, labels, arcface())
    intra = IntraLoss()(ctx)["intraloss_loss"]
    assert intra.item() == pytest.approx(0.204833, abs=1e-6)  # 0.643501 / pi
    base = F.cross_entropy(ctx.logits[0], labels)
    (d_base,) = torch.autograd.grad(base, cos, retain_graph=True)
    (d_intra,) = torch.autograd.grad(intra, cos, retain_graph=True)
    assert d_base[0, 0, 0].item() == pytest.approx(-0.0641, abs=1e-4)  # true-gradient ArcFace
    assert d_intra[0, 0, 0].item() == pytest.approx(-0.530516, abs=1e-6)  # -1 / (pi sin theta), sin theta = 0.6
    (d_total,) = torch.autograd.grad(base + 1.0 * intra, cos)
    assert d_total[0, 0, 0].item() == pytest.approx(-0.0641 - 0.530516, abs=1e-4)
    assert abs(d_intra[0, 0, 0]) > 8 * abs(d_base[0, 0, 0])  # the intra pull dominates once p_y ~ 1


def test_square_shape_and_range() -> None:
    grid = torch.linspace(-1, 1, 101, dtype=torch.float64)
    cos = torch.stack([grid, torch.zeros_like(grid), torch.zeros_like(grid)], dim=-1)[None]
    labels = torch.zeros(101, dtype=torch.long)
    for shape in ("linear", "square"):
        g = IntraLoss(shape=shape)(ctx_from_cosines(cos[:, :1], labels[:1], arcface()))["intraloss_loss"]
        assert 0 <= g.item() <= 1
        theta = target_angles(cos, labels)
        values = theta / math.pi if shape == "linear" else (theta / math.pi) ** 2
        assert values.min() >= 0 and values.max() <= 1 and (values.diff(dim=-1) <= 0).all()
    one = torch.tensor([[[0.8, 0.3, -0.1]]], dtype=torch.float64)
    square = IntraLoss(shape="square")(ctx_from_cosines(one, torch.tensor([0]), arcface()))["intraloss_loss"]
    assert square.item() == pytest.approx(0.204833**2, abs=1e-6)


# -- spec 6(g) 3: only the target centre receives gradient -----------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 4.0])
def test_gradient_only_on_target_centres(beta: float) -> None:
    torch.manual_seed(0)
    head = MarginHead(6, 4, scale=64.0).double()
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 2, 2, 4, 0])
    IntraLoss(beta=beta)(ctx_from_embeddings(x, labels, head))["intraloss_loss"].backward()
    grad = head.weight.grad.abs().sum(dim=1)
    assert (grad[[0, 2, 4]] > 0).all() and (grad[[1, 3, 5]] == 0).all()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_gradient_reaches_encoder_and_head() -> None:
    torch.manual_seed(1)
    encoder, head = torch.nn.Linear(6, 4), MarginHead(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    IntraLoss()(ctx_from_embeddings(encoder(torch.randn(6, 6)), labels, head))["intraloss_loss"].backward()
    assert encoder.weight.grad.abs().sum() > 0 and head.weight.grad.abs().sum() > 0


# -- spec 6(g) 5: no NaN at cos = +-1 ---------------------------------------------------------------------------------


def test_finite_at_cos_plus_minus_one() -> None:
    cos = torch.tensor([[[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1])
    for shape in ("linear", "square"):
        loss = IntraLoss(shape=shape, beta=1.0)(ctx_from_cosines(cos, labels, arcface()))["intraloss_loss"]
        (grad,) = torch.autograd.grad(loss, cos)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert IntraLoss()(ctx_from_cosines(cos[:, :1], labels[:1], arcface()))["intraloss_loss"].item() == pytest.approx(
        math.acos(1 - 1e-6) / math.pi
    )
    head = MarginHead(2, 3).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]]))
    x = torch.tensor([[2.0, 0, 0], [2.0, 0, 0]], dtype=torch.float64, requires_grad=True)  # cos = +1 and -1
    loss = IntraLoss()(ctx_from_embeddings(x, torch.tensor([0, 1]), head))["intraloss_loss"]
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


# -- the anisotropy weight [INFER], views, unknown labels, gradcheck -------------------------------------------------


def test_anisotropy_weights_by_hand() -> None:
    cos = torch.tensor([[[0.9, 0.5, 0.1], [0.2, 0.8, 0.1], [0.3, 0.3, 0.7]]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 2])
    # Nearest other cosine: [0.5, 0.2, 0.3], mean 1/3.
    w = anisotropy_weights(cos, labels, 3.0, labels >= 0)
    torch.testing.assert_close(w, torch.tensor([[1 + 3 * (0.5 - 1 / 3), 1.0, 1.0]], dtype=torch.float64))
    loss = IntraLoss(beta=3.0)(ctx_from_cosines(cos, labels, MarginHead(3, 2).double()))["intraloss_loss"]
    theta = torch.acos(torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)) / math.pi
    assert loss.item() == pytest.approx((w[0] * theta).mean().item(), abs=1e-12)
    assert torch.equal(anisotropy_weights(cos[..., :1], labels * 0, 3.0, labels >= 0), torch.ones(1, 3).double())


def test_mean_over_views_and_skips_unknown_labels() -> None:
    cos = torch.tensor([[[0.8, 0.3, -0.1], [0.1, 0.6, 0.0]], [[0.5, 0.3, -0.1], [0.2, 0.9, 0.0]]], dtype=torch.float64)
    loss = IntraLoss()(ctx_from_cosines(cos, torch.tensor([0, 1]), arcface()))["intraloss_loss"]
    expected = torch.acos(torch.tensor([0.8, 0.6, 0.5, 0.9], dtype=torch.float64)).mean() / math.pi
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    partial = IntraLoss()(ctx_from_cosines(cos, torch.tensor([0, -1]), arcface()))["intraloss_loss"]
    expected = torch.acos(torch.tensor([0.8, 0.5], dtype=torch.float64)).mean() / math.pi
    assert partial.item() == pytest.approx(expected.item(), abs=1e-12)
    none = IntraLoss()(ctx_from_cosines(cos, torch.tensor([-1, -1]), arcface()))["intraloss_loss"]
    assert none.item() == 0.0


@pytest.mark.parametrize("shape", ["linear", "square"])
def test_gradcheck(shape: str) -> None:
    torch.manual_seed(2)
    labels = torch.tensor([0, 1, 4, 1])
    head = MarginHead(5, 3).double()

    def fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        cos = (F.normalize(x, dim=-1) @ F.normalize(w, dim=-1).t())[None]
        ctx = LossContext(features=x, embeddings=x[None], labels=labels, cosines=cos, logits=cos, head=head)
        # beta = 0: the detached weights would move under finite differences without being differentiated.
        return IntraLoss(shape=shape, beta=0.0)(ctx)["intraloss_loss"]

    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x, w))


# -- config and registry ---------------------------------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    cfg = IntraLossConfig()
    assert cfg.weight == WeightSchedule(kind="constant", value=1.0)
    assert (cfg.shape, cfg.beta, cfg.eps, cfg.enabled) == ("linear", 0.0, 1e-6, False)
    cfg.validate()
    for bad in [IntraLossConfig(shape="cube"), IntraLossConfig(beta=-1.0), IntraLossConfig(eps=0.0)]:
        with pytest.raises(ConfigError):
            bad.validate()
    module = REGULARISERS.get("intraloss")(cfg, num_classes=5, embed_dim=4, num_samples=100)
    assert isinstance(module, IntraLoss) and build_intraloss is REGULARISERS.get("intraloss")
    assert list(module.state_dict()) == []
