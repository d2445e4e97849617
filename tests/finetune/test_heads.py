"""Margin heads against the hand-computed values of docs/losses.md section 1."""

import math

import numpy as np
import pytest
import torch

from finetune.heads import HeadConfig, MarginHead, build_head, margin_cross_entropy
from lafs.errors import ConfigError

ARCFACE, COSFACE, CM1 = (1.0, 0.5, 0.0), (1.0, 0.0, 0.4), (1.0, 0.3, 0.2)
COS = [[0.8, 0.3, -0.1]]


def head(margins=ARCFACE, **kwargs) -> MarginHead:
    return MarginHead(3, 2, margins=margins, **kwargs).double()


def ce(h: MarginHead, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return margin_cross_entropy(h.logits(cos, labels), labels, None)


@pytest.mark.parametrize(("margins", "expected"), [(ARCFACE, 0.414411), (COSFACE, 0.4), (CM1, 0.386957)])
def test_target_transform_hand_values(margins, expected):
    psi = head(margins).margin(torch.tensor([0.8], dtype=torch.float64))
    assert psi.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("margins", "expected"), [(ARCFACE, 6.6043e-4), (COSFACE, 1.66018e-3)])
def test_cross_entropy_hand_values(margins, expected):
    cos, y = torch.tensor(COS, dtype=torch.float64), torch.tensor([0])
    assert ce(head(margins), cos, y).item() == pytest.approx(expected, rel=1e-4)
    assert ce(head((1.0, 0.0, 0.0)), cos, y).item() < 1e-13  # plain normalised softmax: ~1.4e-14


def test_threshold_guard_past_pi():
    h = head(ARCFACE, guard="threshold")
    assert math.cos(math.pi - 0.5) == pytest.approx(-0.877583, abs=1e-6)
    assert h.margin(torch.tensor([-0.9], dtype=torch.float64)).item() == pytest.approx(-1.139713, abs=1e-6)
    assert head(ARCFACE, guard="none").margin(torch.tensor([-0.9], dtype=torch.float64)).item() == pytest.approx(
        -0.998801, abs=1e-6
    )


def test_easy_margin_leaves_obtuse_angles_alone():
    cos = torch.tensor([-0.2], dtype=torch.float64)
    assert head(ARCFACE, guard="easy").margin(cos).item() == pytest.approx(-0.2)
    assert head(ARCFACE, guard="none").margin(cos).item() == pytest.approx(-0.645256, abs=1e-6)


def test_no_margin_is_normalised_softmax_and_non_targets_untouched():
    cos, y = torch.tensor([[0.8, 0.3, -0.1], [0.1, 0.2, 0.9]], dtype=torch.float64), torch.tensor([0, 2])
    plain = head((1.0, 0.0, 0.0)).logits(cos, y)
    assert torch.equal(plain, 64 * cos)
    for margins in (ARCFACE, COSFACE, CM1):
        logits = head(margins).logits(cos, y)
        mask = torch.ones_like(cos, dtype=torch.bool)
        mask[0, 0] = mask[1, 2] = False
        assert torch.equal(logits[mask], 64 * cos[mask])


def test_threshold_guarded_margin_is_monotone_in_theta():
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    psi = head(ARCFACE, guard="threshold").margin(torch.cos(theta))
    assert torch.all(psi[1:] <= psi[:-1] + 1e-12)
    unguarded = head(ARCFACE, guard="none").margin(torch.cos(theta))
    assert not torch.all(unguarded[1:] <= unguarded[:-1] + 1e-12)


def test_invariances():
    torch.manual_seed(0)
    h = MarginHead(5, 4, margins=ARCFACE).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 0])
    base = ce(h, h.cosines(x), y)
    assert ce(h, h.cosines(3.7 * x), y).item() == pytest.approx(base.item(), abs=1e-12)
    with torch.no_grad():
        h.weight.mul_(torch.tensor([0.5, 2.0, 3.0, 1.5, 9.0], dtype=torch.float64)[:, None])
    assert ce(h, h.cosines(x), y).item() == pytest.approx(base.item(), abs=1e-12)
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = MarginHead(5, 4, margins=ARCFACE).double()
    with torch.no_grad():
        permuted.weight.copy_(h.weight[perm])
    new_labels = torch.argsort(perm)[y]
    assert ce(permuted, permuted.cosines(x), new_labels).item() == pytest.approx(base.item(), abs=1e-12)


def test_true_and_straight_through_gradients():
    y = torch.tensor([0])
    for straight, expected in ((False, -0.064091), (True, -0.042254)):
        cos = torch.tensor(COS, dtype=torch.float64, requires_grad=True)
        ce(head(ARCFACE, straight_through=straight), cos, y).backward()
        assert cos.grad[0, 0].item() == pytest.approx(expected, abs=5e-6)
    theta = math.acos(0.8)
    assert math.sin(theta + 0.5) / math.sin(theta) == pytest.approx(1.516817, abs=1e-6)


def test_minus_one_labels_are_untouched():
    cos = torch.tensor([[0.8, 0.3, -0.1]], dtype=torch.float64)
    assert torch.equal(head(ARCFACE).logits(cos, torch.tensor([-1])), 64 * cos)


def test_cosines_clamped_and_gradients_finite_at_plus_minus_one():
    h = MarginHead(2, 2, margins=ARCFACE)
    with torch.no_grad():
        h.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    cos = h.cosines(x.half().float() * 1.001)
    assert cos.abs().max() <= 1.0
    for value in (1.0, -1.0):
        c = torch.tensor([[value, 0.9]], requires_grad=True)  # a competitor keeps the softmax unsaturated
        loss = ce(h, c, torch.tensor([0]))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(c.grad).all()
        assert c.grad[0, 0] < 0  # a larger target cosine always lowers the loss


def test_soft_labels_spread_the_margin():
    h = head(COSFACE)
    cos = torch.tensor([[0.5, 0.2, 0.1]], dtype=torch.float64)
    one_hot = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(h.logits(cos, torch.tensor([0]), one_hot), h.logits(cos, torch.tensor([0])))
    half = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    logits = h.logits(cos, torch.tensor([0]), half)
    assert logits[0, :2].tolist() == pytest.approx((64 * (cos[0, :2] - 0.5 * 0.4)).tolist())
    assert logits[0, 2].item() == pytest.approx(64 * 0.1)
    soft = margin_cross_entropy(logits, torch.tensor([0]), half)
    expected = -(half * logits.log_softmax(-1)).sum()
    assert soft.item() == pytest.approx(expected.item())


def test_interclass_filter_zeroes_non_target_cosines_above_threshold():
    h = head((1.0, 0.0, 0.0), interclass_filter=0.25)
    cos = torch.tensor([[0.8, 0.3, -0.1]], dtype=torch.float64)
    assert h.logits(cos, torch.tensor([0]))[0].tolist() == pytest.approx([64 * 0.8, 0.0, -6.4])


def test_per_class_margins_replace_m2():
    h = head(ARCFACE)
    cos = torch.tensor([[0.8, 0.3, -0.1]], dtype=torch.float64)
    margins = torch.tensor([0.5, 0.2, 0.2], dtype=torch.float64)
    assert torch.equal(h.logits(cos, torch.tensor([0]), class_margins=margins), h.logits(cos, torch.tensor([0])))
    other = h.logits(cos, torch.tensor([0]), class_margins=torch.full((3,), 0.2, dtype=torch.float64))
    assert other[0, 0].item() == pytest.approx(64 * math.cos(math.acos(0.8) + 0.2))


def test_views_dimension_broadcasts_labels():
    torch.manual_seed(0)
    h = MarginHead(4, 3)
    x, y = torch.randn(2, 5, 3), torch.tensor([0, 1, 2, 3, 0])
    both = h(x, y)
    assert both.shape == (2, 5, 4)
    assert torch.allclose(both[1], h(x[1], y))


def test_config_defaults_and_errors():
    assert HeadConfig().resolved_margins() == COSFACE
    assert HeadConfig(name="arcface").resolved_margins() == ARCFACE
    h = build_head(HeadConfig(name="combined", scale=32.0), num_classes=7, embed_dim=3)
    assert (h.m1, h.m2, h.m3, h.scale, h.num_classes) == (1.0, 0.3, 0.2, 32.0, 7)
    with pytest.raises(ConfigError, match="unknown head"):
        HeadConfig(name="nope").validate()
    with pytest.raises(ConfigError, match="margins"):
        HeadConfig(margins=[1.0, 0.5]).validate()
    assert np.isfinite(h.weight.detach().numpy()).all()
