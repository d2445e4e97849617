"""CoReFace (docs/losses.md section 3): dropout views, masked cross-view contrast, adaptive margin."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from finetune.context import LossContext
from finetune.heads import MarginHead, margin_cross_entropy
from finetune.regularisers.base import ViewSource
from finetune.regularisers.coreface import (
    CoReFace,
    CoReFaceConfig,
    batch_margin,
    build_coreface,
    contrastive_loss,
    masked_cross_view_cosines,
)
from finetune.task import FinetuneConfig
from lafs.config import load_config
from lafs.engine import OptimConfig
from lafs.errors import ConfigError
from lafs.registry import REGULARISERS
from lafs.schedules import WeightSchedule


def make_ctx(
    views: torch.Tensor, labels: torch.Tensor, head: MarginHead, soft_labels: torch.Tensor | None = None
) -> LossContext:
    """A context as the objective builds it from views (V, B, d)."""
    return LossContext.from_embeddings(head, views[0], views, labels, soft_labels)


def unit(degrees: list[float]) -> torch.Tensor:
    angles = torch.deg2rad(torch.tensor(degrees, dtype=torch.float64))
    return torch.stack([angles.cos(), angles.sin()], dim=1)


def hand_views() -> tuple[torch.Tensor, torch.Tensor]:
    """Spec 3(g) 1: B = 3, labels [0, 0, 1], view 1 at (0, 30, 90) degrees, view 2 at (10, 40, 100)."""
    return torch.stack([unit([0, 30, 90]), unit([10, 40, 100])]), torch.tensor([0, 0, 1])


def head2d() -> MarginHead:
    return MarginHead(2, 2, scale=64.0).double()


# -- spec 3(g) 1: hand example -----------------------------------------------------------------------------------


def test_hand_example() -> None:
    views, labels = hand_views()
    cos = masked_cross_view_cosines(views[0], views[1], labels)
    expected = torch.tensor(
        [[0.984808, 0.0, -0.173648], [0.0, 0.984808, 0.342020], [0.173648, 0.642788, 0.984808]], dtype=torch.float64
    )
    torch.testing.assert_close(cos, expected, rtol=0, atol=1e-6)
    assert batch_margin(cos).item() == pytest.approx(0.656539, abs=1e-6)
    module = CoReFace()
    loss = module(make_ctx(views, labels, head2d()))["coreface_loss"]
    assert module.margin.item() == pytest.approx(0.649973, abs=1e-6)
    # The spec's L_con uses the running m_1 (0.649973), not m_b: with m_b it would be 7.118730.
    assert loss.item() == pytest.approx(6.886093, abs=1e-6)
    assert contrastive_loss(cos, batch_margin(cos), 64.0).item() == pytest.approx(7.118730, abs=1e-6)


def test_remove_mask_drops_the_same_id_entries() -> None:
    views, labels = hand_views()
    cos = masked_cross_view_cosines(views[0], views[1], labels, "remove")
    assert math.isinf(cos[0, 1]) and math.isinf(cos[1, 0]) and torch.isfinite(cos.diagonal()).all()
    assert batch_margin(cos).item() == pytest.approx(0.656539, abs=1e-6)  # the hardest negative floors at 0 anyway
    loss = CoReFace(mask="remove")(make_ctx(views, labels, head2d()))["coreface_loss"]
    zero = CoReFace(mask="zero")(make_ctx(views, labels, head2d()))["coreface_loss"]
    assert loss.item() == pytest.approx(6.886093, abs=1e-6) and loss < zero  # e^0 = 1 leaves the denominator
    # By hand: the CE over the remaining entries only.
    raw = (F.normalize(views[0], dim=-1) @ F.normalize(views[1], dim=-1).t()).clamp(-1, 1)
    m = 0.99 * 0.6565385020081388
    rows = [[raw[0, 0] - m, raw[0, 2]], [raw[1, 1] - m, raw[1, 2]], [raw[2, 2] - m, raw[2, 0], raw[2, 1]]]
    by_hand = sum(torch.logsumexp(64 * torch.stack(r), 0) - 64 * r[0] for r in rows) / 3
    assert loss.item() == pytest.approx(by_hand.item(), abs=1e-10)


# -- spec 3(g) 2: no dropout and no contrast reduces to the single-view margin CE --------------------------------


def test_reduces_to_margin_ce_without_dropout_and_contrast() -> None:
    torch.manual_seed(0)
    head = MarginHead(5, 4, scale=64.0).double()
    x, labels = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 0])
    module = CoReFace(dropout=0.0, dropout_phase2=0.0).train()
    views = module.embedding_views(x, epoch=7.0)
    assert views.shape == (2, 6, 4)
    two = margin_cross_entropy(head.logits(head.cosines(views), labels), labels, None)
    one = margin_cross_entropy(head(x, labels), labels, None)
    torch.testing.assert_close(two, one, rtol=0, atol=0)  # w1 = w2 = 0.5 of identical views


# -- spec 3(g) 3: the margin is detached --------------------------------------------------------------------------


def test_margin_is_detached() -> None:
    torch.manual_seed(1)
    views = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 3, 1])
    module = CoReFace().double()
    loss = module(make_ctx(views, labels, MarginHead(4, 5).double()))["coreface_loss"]
    (grad,) = torch.autograd.grad(loss, views)
    constant = float(module.margin)  # the same value, as a plain number
    cos = masked_cross_view_cosines(views[0], views[1], labels)
    (expected,) = torch.autograd.grad(contrastive_loss(cos, constant, 64.0), views)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)


# -- spec 3(g) 4: permutation invariance --------------------------------------------------------------------------


def test_batch_permutation_invariance() -> None:
    torch.manual_seed(2)
    views, labels = torch.randn(2, 8, 5, dtype=torch.float64), torch.tensor([0, 0, 1, 2, 3, 1, 4, 4])
    perm = torch.randperm(8)
    head = MarginHead(5, 5).double()
    a = CoReFace()(make_ctx(views, labels, head))["coreface_loss"]
    b = CoReFace()(make_ctx(views[:, perm], labels[perm], head))["coreface_loss"]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# -- spec 3(g) 5: all-distinct labels give InfoNCE with a diagonal margin ----------------------------------------


def test_distinct_labels_make_mask_a_no_op() -> None:
    torch.manual_seed(3)
    views, labels = torch.randn(2, 6, 4, dtype=torch.float64), torch.arange(6)
    module = CoReFace(scale=10.0).double()
    loss = module(make_ctx(views, labels, MarginHead(6, 4).double()))["coreface_loss"]
    sim = (F.normalize(views[0], dim=-1) @ F.normalize(views[1], dim=-1).t()).clamp(-1, 1)
    m = module.margin.double()
    infonce = F.cross_entropy(10.0 * (sim - m * torch.eye(6, dtype=torch.float64)), torch.arange(6))
    torch.testing.assert_close(loss, infonce, rtol=0, atol=1e-12)
    torch.testing.assert_close(masked_cross_view_cosines(views[0], views[1], labels), sim)


# -- spec 3(g) 6: running-margin semantics -------------------------------------------------------------------------


def test_running_margin_update_rules() -> None:
    views, labels = hand_views()
    head = head2d()
    m_b = 0.6565385020081388
    module = CoReFace().double()
    module(make_ctx(views, labels, head))
    assert module.margin.item() == pytest.approx(0.99 * m_b, abs=1e-12)
    module(make_ctx(views, labels, head))
    assert module.margin.item() == pytest.approx(0.99 * m_b + 0.01 * 0.99 * m_b, abs=1e-12)
    ema = CoReFace(ema_weight_on_new=0.01).double()
    ema(make_ctx(views, labels, head))
    assert ema.margin.item() == pytest.approx(0.01 * m_b, abs=1e-12)


def test_margin_not_updated_by_eval_or_no_grad_calls() -> None:
    views, labels = hand_views()
    module = CoReFace().double()
    with torch.no_grad():
        loss = module(make_ctx(views, labels, head2d()))["coreface_loss"]
    assert module.margin.item() == 0.0 and loss.item() == pytest.approx(6.886093, abs=1e-6)
    module.eval()
    module(make_ctx(views, labels, head2d()))
    assert module.margin.item() == 0.0


def test_margin_is_a_checkpointed_buffer() -> None:
    views, labels = hand_views()
    module = CoReFace().double()
    module(make_ctx(views, labels, head2d()))
    state = module.state_dict()
    assert list(state) == ["margin"]
    restored = CoReFace().double()
    restored.load_state_dict(state)
    a = module(make_ctx(views, labels, head2d()))["coreface_loss"]
    b = restored(make_ctx(views, labels, head2d()))["coreface_loss"]
    assert torch.equal(a, b) and torch.equal(module.margin, restored.margin)


# -- spec 3(g) 7: dropout views --------------------------------------------------------------------------------------


def test_dropout_views_by_phase_and_mode() -> None:
    torch.manual_seed(4)
    features = torch.ones(64, 512)
    module = CoReFace().train()
    one = module.embedding_views(features, epoch=6.99)
    assert one.shape == (1, 64, 512)
    assert (one == 0).double().mean().item() == pytest.approx(0.4, abs=0.01)
    two = module.embedding_views(features, epoch=7.0)
    assert two.shape == (2, 64, 512)
    assert (two == 0).double().mean().item() == pytest.approx(0.6, abs=0.01)
    assert not torch.equal(two[0] == 0, two[1] == 0)  # independent masks
    assert two.mean().item() == pytest.approx(1.0, abs=0.02)  # unbiased: E[view] = h
    module.eval()
    assert torch.equal(module.embedding_views(features, epoch=8.0), features.expand(2, -1, -1))


# -- errors, mixed batches, reverse direction ------------------------------------------------------------------------


def test_views_act_before_the_embedding_layer_when_the_encoder_has_one() -> None:
    # IResNet's placement: the masks drop the flattened map, then each view goes through the shared FC + BN. With a
    # non-linear layer (x + 1) the order shows: drop first gives {1, 1 + 1 / (1 - p)} = {1, 3} at p = 0.5; the
    # other order would give {0, 2 / (1 - p)} = {0, 4}.
    reg = CoReFace(phase2_epoch=1.0, dropout=0.5, dropout_phase2=0.5).train()
    source = ViewSource(torch.ones(4, 64), lambda x: x + 1.0)
    features = torch.full((4, 64), 9.0)  # what the views must not be made of
    torch.manual_seed(0)
    one = reg.embedding_views(features, 0.0, source)
    two = reg.embedding_views(features, 1.0, source)
    assert one.shape == (1, 4, 64) and two.shape == (2, 4, 64)
    assert set(torch.cat([one, two]).unique().tolist()) == {1.0, 3.0}
    assert not torch.equal(two[0], two[1])  # independent masks
    reg.eval()
    assert torch.equal(reg.embedding_views(features, 1.0, source), torch.full((2, 4, 64), 2.0))


def test_needs_two_views() -> None:
    views, labels = hand_views()
    with pytest.raises(ConfigError, match="2 embedding views"):
        CoReFace()(make_ctx(views[:1], labels, head2d()))


def test_mixed_batches() -> None:
    views, labels = hand_views()
    soft = F.one_hot(labels, 2).double()
    module = CoReFace().double()
    assert module(make_ctx(views, labels, head2d(), soft))["coreface_loss"].item() == 0.0
    assert module.margin.item() == 0.0  # a skipped batch does not move the margin
    dominant = CoReFace(mixed_batches="dominant")(make_ctx(views, labels, head2d(), soft))["coreface_loss"]
    assert dominant.item() == pytest.approx(6.886093, abs=1e-6)


def test_reverse_direction() -> None:
    views, labels = hand_views()
    terms = CoReFace(reverse_weight=0.5)(make_ctx(views, labels, head2d()))
    assert set(terms) == {"coreface_loss", "coreface_reverse_loss"}
    reverse = masked_cross_view_cosines(views[1], views[0], labels)
    expected = 0.5 * contrastive_loss(reverse, 0.99 * 0.6565385020081388, 64.0)
    torch.testing.assert_close(terms["coreface_reverse_loss"], expected, rtol=0, atol=1e-12)
    assert set(CoReFace()(make_ctx(views, labels, head2d()))) == {"coreface_loss"}


def test_reverse_call_updates_margin_as_the_authors_do() -> None:
    """The authors call the reverse direction at weight 0: no term, but a second margin update. By hand: forward
    m_b = (0.984808 + 0.642788 + 0.342020) / 3 = 0.656539; the reverse C is C transposed, hardest negatives by
    column: m_b = (0.811160 + 0.342020 + 0.642788) / 3 = 0.598656; m = 0.99 * 0.598656 + 0.01 * (0.99 * 0.656539)
    = 0.599169. The forward term keeps its own margin, 0.99 * 0.656539."""
    views, labels = hand_views()
    module = CoReFace(reverse_updates_margin=True).train()
    terms = module(make_ctx(views, labels, head2d()))
    assert set(terms) == {"coreface_loss"}
    assert module.margin.item() == pytest.approx(0.599169, abs=1e-6)
    cos = masked_cross_view_cosines(views[0], views[1], labels)
    torch.testing.assert_close(terms["coreface_loss"], contrastive_loss(cos, 0.99 * 0.6565385020081388, 64.0))
    ours = CoReFace().train()
    ours(make_ctx(views, labels, head2d()))
    assert ours.margin.item() == pytest.approx(0.99 * 0.6565385020081388, abs=1e-6)  # one update per step


# -- finiteness, gradient routing, gradcheck -------------------------------------------------------------------------


def test_finite_at_identical_embeddings() -> None:
    views = torch.ones(2, 4, 3, dtype=torch.float64, requires_grad=True)  # C = 1 everywhere (the clamp edge)
    for labels in (torch.arange(4), torch.tensor([0, 0, 1, 1])):
        loss = CoReFace()(make_ctx(views, labels, MarginHead(4, 3).double()))["coreface_loss"]
        (grad,) = torch.autograd.grad(loss, views)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    zero = torch.zeros(2, 4, 3, dtype=torch.float64, requires_grad=True)
    loss = CoReFace()(make_ctx(zero, torch.arange(4), MarginHead(4, 3).double()))["coreface_loss"]
    assert torch.isfinite(torch.autograd.grad(loss, zero)[0]).all()


def test_gradient_reaches_the_encoder_not_the_head() -> None:
    torch.manual_seed(5)
    encoder, head = torch.nn.Linear(6, 4), MarginHead(5, 4)
    module = CoReFace().train()
    views = module.embedding_views(encoder(torch.randn(8, 6)), epoch=7.0)
    module(make_ctx(views, torch.tensor([0, 1, 2, 3, 4, 0, 1, 2]), head))["coreface_loss"].backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    assert head.weight.grad is None


def test_gradcheck() -> None:
    torch.manual_seed(6)
    labels = torch.tensor([0, 0, 1, 2])
    head = MarginHead(3, 3).double()

    def fn(views: torch.Tensor) -> torch.Tensor:
        # ema_weight_on_new = 0 pins the margin (the detached m_b would move under finite differences).
        module = CoReFace(scale=4.0, reverse_weight=0.5, ema_weight_on_new=0.0).double()
        module.margin.fill_(0.3)
        terms = module(make_ctx(views, labels, head))
        return terms["coreface_loss"] + terms["coreface_reverse_loss"]

    views = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (views,))


# -- config and registry ---------------------------------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    cfg = CoReFaceConfig()
    assert cfg.weight == WeightSchedule(kind="start_at", value=0.05, start_epoch=7)
    assert (cfg.weight(6.99), cfg.weight(7.0)) == (0.0, 0.05)
    assert (cfg.phase2_epoch, cfg.dropout, cfg.dropout_phase2, cfg.scale) == (None, 0.4, 0.6, 64.0)
    assert (cfg.ema_weight_on_new, cfg.mask, cfg.reverse_weight, cfg.mixed_batches) == (0.99, "zero", 0.0, "skip")
    cfg.validate()
    bad = [
        CoReFaceConfig(dropout=1.0),
        CoReFaceConfig(dropout_phase2=-0.1),
        CoReFaceConfig(scale=0.0),
        CoReFaceConfig(ema_weight_on_new=1.5),
        CoReFaceConfig(reverse_weight=-1.0),
        CoReFaceConfig(mask="ignore"),
    ]
    for cfg_bad in bad:
        with pytest.raises(ConfigError):
            cfg_bad.validate()
    module = REGULARISERS.get("coreface")(cfg, num_classes=5, embed_dim=4, num_samples=100)
    assert isinstance(module, CoReFace) and build_coreface is REGULARISERS.get("coreface")
    assert module.margin.item() == 0.0 and module.phase2_epoch == 7.0


def phase2(cfg: CoReFaceConfig, optim: OptimConfig | None = None) -> float:
    """The epoch of the two-view switch of the module built from ``cfg`` in a run ``optim`` describes."""
    resolved = cfg.in_run(optim or OptimConfig(epochs=34))
    return build_coreface(resolved, num_classes=5, embed_dim=4, num_samples=100).phase2_epoch


def test_phase2_follows_the_weight_start() -> None:
    """One key moves the switch: the two views start where the weight first turns positive."""
    start_at = WeightSchedule(kind="start_at", value=0.05, start_epoch=5)
    assert phase2(CoReFaceConfig(weight=start_at)) == 5.0
    assert phase2(CoReFaceConfig(weight=WeightSchedule(kind="constant", value=0.05))) == 0.0
    assert phase2(CoReFaceConfig(weight=WeightSchedule(kind="constant", value=0.0))) == math.inf  # never on
    piecewise = WeightSchedule(kind="piecewise", boundaries=[3, 9], values=[0.0, 0.0, 0.1])
    assert phase2(CoReFaceConfig(weight=piecewise)) == 9.0
    # CoReFace's 7 of its 24 epochs, in a 12-epoch run under optim.schedules=relative: 3.5.
    assert phase2(CoReFaceConfig(), OptimConfig(epochs=12, schedules="relative")) == 3.5
    fraction = WeightSchedule(kind="start_at", value=0.05, start_epoch=0.25, unit="fraction")
    assert phase2(CoReFaceConfig(weight=fraction), OptimConfig(epochs=200)) == 50.0


def test_old_configs_with_both_keys() -> None:
    """phase2_epoch equal to the weight's start (as written) still works, stretched together; any other is one line."""
    both = CoReFaceConfig(phase2_epoch=7.0)
    both.validate()
    assert phase2(both, OptimConfig(epochs=12, schedules="relative")) == 3.5
    expected = r"^coreface\.phase2_epoch=.* disagrees with coreface\.weight, which starts at 7: .*drop"
    for cfg in (CoReFaceConfig(phase2_epoch=6.0), CoReFaceConfig(phase2_epoch=-1.0)):
        with pytest.raises(ConfigError, match=expected) as error:
            cfg.validate()
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"^regularisers\.coreface\.phase2_epoch|^coreface\.phase2_epoch=5 "):
        load_config(FinetuneConfig, overrides=["regularisers.coreface.phase2_epoch=5"])
    cfg = load_config(FinetuneConfig, overrides=["regularisers.coreface.weight.start_epoch=5"])
    assert phase2(cfg.regularisers.coreface) == 5.0
