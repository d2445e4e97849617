"""DINO head, loss and EMA (docs/losses.md section 5.1). Pinned values are float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from lafs.dino import DINOHead, DINOLoss, StallWatch, collapse_warning, ema_update, stall_warning

LN2 = math.log(2.0)


def signals(out: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(out[k]) for k in ("teacher_entropy", "teacher_batch_entropy", "log_classes")}


def reference_pairs(student: torch.Tensor, teacher: torch.Tensor, temp: float, views: int, globals_: int) -> np.ndarray:
    """ce[a, v]: batch-mean CE from teacher global a to student view v, in numpy (centre 0, student temp 0.1)."""
    s = student.detach().numpy().reshape(views, -1, student.shape[-1]) / 0.1
    t = teacher.detach().numpy().reshape(globals_, -1, teacher.shape[-1]) / temp
    logp = s - s.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    q = np.exp(t - t.max(-1, keepdims=True))
    q = q / q.sum(-1, keepdims=True)
    return np.array([[(-(q[a] * logp[v]).sum(-1)).mean() for v in range(views)] for a in range(globals_)])


# ----------------------------------------------------------------------------------------------------------- head


def test_head_output_shape_and_layer_count():
    head = DINOHead(8, out_dim=16, hidden_dim=12, bottleneck_dim=4)
    assert head(torch.randn(5, 8)).shape == (5, 16)
    assert sum(isinstance(m, nn.Linear) for m in head.mlp.modules()) == 3
    single = DINOHead(8, out_dim=16, hidden_dim=12, bottleneck_dim=4, num_layers=1)
    assert isinstance(single.mlp, nn.Linear) and single(torch.randn(2, 8)).shape == (2, 16)


def test_head_init_and_forward_formula():
    torch.manual_seed(0)
    wide = DINOHead(256, out_dim=16, hidden_dim=512, bottleneck_dim=4)
    # trunc_normal(std 0.02) with DINO's absolute cut at +-2, i.e. effectively N(0, 0.02^2); zero biases.
    assert abs(wide.mlp[0].weight.std().item() - 0.02) < 0.001 and abs(wide.mlp[0].weight.mean().item()) < 0.001
    assert all(torch.count_nonzero(m.bias) == 0 for m in wide.mlp.modules() if isinstance(m, nn.Linear))
    head = DINOHead(8, out_dim=16, hidden_dim=12, bottleneck_dim=4).double()
    x = torch.randn(3, 8, dtype=torch.float64)
    v = head.last_layer.parametrizations.weight.original1
    expected = nn.functional.normalize(head.mlp(x), dim=-1) @ (v / v.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(head(x), expected)


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_last_layer_rows_have_unit_norm_and_magnitude_frozen_iff_norm_last_layer(norm_last_layer):
    torch.manual_seed(0)
    head = DINOHead(8, out_dim=16, hidden_dim=12, bottleneck_dim=4, norm_last_layer=norm_last_layer).double()
    magnitude = head.last_layer.parametrizations.weight.original0
    assert magnitude.requires_grad is not norm_last_layer
    torch.testing.assert_close(magnitude, torch.ones(16, 1, dtype=torch.float64))
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(16, dtype=torch.float64))
    # A training step keeps the rows unit-norm only when the magnitude is frozen.
    optimizer = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=10.0)
    head(torch.randn(4, 8, dtype=torch.float64)).pow(2).sum().backward()
    optimizer.step()
    norms = head.last_layer.weight.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms)) is norm_last_layer


def test_cancel_last_layer_gradients_clears_only_the_last_layer():
    head = DINOHead(8, out_dim=16, hidden_dim=12, bottleneck_dim=4, norm_last_layer=False)
    head(torch.randn(4, 8)).sum().backward()
    assert all(p.grad is not None for p in head.last_layer.parameters())
    head.cancel_last_layer_gradients()
    assert all(p.grad is None for p in head.last_layer.parameters())
    assert all(p.grad is not None for p in head.mlp.parameters())


def test_head_state_dict_round_trip():
    torch.manual_seed(0)
    head = DINOHead(8, out_dim=16, hidden_dim=12, bottleneck_dim=4)
    torch.manual_seed(1)
    copy = DINOHead(8, out_dim=16, hidden_dim=12, bottleneck_dim=4)
    state = head.state_dict()
    assert {"last_layer.parametrizations.weight.original0", "last_layer.parametrizations.weight.original1"} <= set(
        state
    )
    copy.load_state_dict(state)
    x = torch.randn(3, 8)
    torch.testing.assert_close(copy(x), head(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------- loss


def test_constant_outputs_give_log_k():
    # Spec property: a uniform teacher against a uniform student costs log K per pair, whatever the constants.
    k, batch, views = 7, 3, 10
    student = torch.full((views * batch, k), 0.3, dtype=torch.float64)
    teacher = torch.full((2 * batch, k), -1.7, dtype=torch.float64)
    out = DINOLoss(k).double()(student, teacher, teacher_temp=0.04, num_views=views)
    assert abs(out["loss"].item() - math.log(k)) < 1e-12
    assert out["loss"] is out["dino_loss"]


def test_tiny_case_by_hand():
    # K = 3, B = 1, views (g0, g1, l2), student temp 0.1, teacher temp 0.04. Logits are temp * ln2 * integers, so
    # every softmax is a power-of-two fraction:
    #   student p0 = (1/2, 1/4, 1/4), p1 = (1/4, 1/2, 1/4), p2 = (1/4, 1/4, 1/2)   [-log p in units of ln2: 1 or 2]
    #   teacher q0 = (1/2, 1/4, 1/4), q1 = (1/4, 1/4, 1/2)
    # CE(q0, p1) = 1/2*2 + 1/4*1 + 1/4*2 = 1.75 ln2      CE(q0, p2) = 1/2*2 + 1/4*2 + 1/4*1 = 1.75 ln2
    # CE(q1, p0) = 1/4*1 + 1/4*2 + 1/2*2 = 1.75 ln2      CE(q1, p2) = 1/4*2 + 1/4*2 + 1/2*1 = 1.50 ln2
    # n_terms = 2 * 3 - 2 = 4, so the loss is 6.75 / 4 ln2 = 1.6875 ln2. (With the self pairs CE(q0, p0) = 1.5 ln2
    # and CE(q1, p1) = 1.75 ln2 it would be 10 / 6 ln2 instead.)
    student = 0.1 * LN2 * torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    teacher = 0.04 * LN2 * torch.tensor([[1.0, 0, 0], [0, 0, 1]], dtype=torch.float64)
    out = DINOLoss(3).double()(student, teacher, teacher_temp=0.04, num_views=3)
    assert abs(out["loss"].item() - 1.6875 * LN2) < 1e-10
    # Per-sample teacher entropy: H(1/2, 1/4, 1/4) = 1.5 ln2 for both; batch mean (3/8, 1/4, 3/8).
    assert abs(out["teacher_entropy"].item() - 1.5 * LN2) < 1e-10
    batch_mean = np.array([3 / 8, 1 / 4, 3 / 8])
    assert abs(out["teacher_batch_entropy"].item() + (batch_mean * np.log(batch_mean)).sum()) < 1e-10
    assert abs(out["log_classes"].item() - math.log(3)) < 1e-12


def test_average_over_the_18_pairs_and_no_view_against_itself():
    torch.manual_seed(0)
    k, batch, views, temp = 5, 3, 10, 0.05
    teacher = torch.randn(2 * batch, k, dtype=torch.float64)
    student = torch.randn(views * batch, k, dtype=torch.float64)
    # Student global 0 predicts exactly the teacher's distribution for global 0 (same softmax after temperatures).
    student[:batch] = teacher[:batch] * (0.1 / temp)
    student.requires_grad_(True)
    out = DINOLoss(k).double()(student, teacher, teacher_temp=temp, num_views=views)

    ce = reference_pairs(student, teacher, temp, views, 2)
    mask = np.ones_like(ce, dtype=bool)
    mask[0, 0] = mask[1, 1] = False
    assert mask.sum() == 18
    assert abs(out["loss"].item() - ce[mask].mean()) < 1e-12
    assert abs(out["loss"].item() - ce.mean()) > 1e-3  # including the self pairs would change the value

    # Only teacher global 1 looks at student view 0, so d loss / d s_0 = (p_0 - q_1) / (18 * B * student_temp):
    # teacher global 0 (equal to p_0 here) contributes nothing.
    out["loss"].backward()
    p0 = torch.softmax(student.detach()[:batch] / 0.1, -1)
    q1 = torch.softmax(teacher[batch:] / temp, -1)
    torch.testing.assert_close(student.grad[:batch], (p0 - q1) / (18 * batch * 0.1))


def test_symmetric_in_the_two_globals():
    torch.manual_seed(0)
    k, batch, views = 6, 4, 5
    student = torch.randn(views * batch, k, dtype=torch.float64)
    teacher = torch.randn(2 * batch, k, dtype=torch.float64)
    swap = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch), torch.arange(2 * batch, views * batch)])
    first = DINOLoss(k).double()(student, teacher, 0.04, views)["loss"]
    swapped = DINOLoss(k).double()(student[swap], teacher[swap[: 2 * batch]], 0.04, views)["loss"]
    assert abs(first.item() - swapped.item()) < 1e-12


def test_centre_update_after_the_loss_uses_the_old_centre():
    torch.manual_seed(0)
    k, batch, views = 5, 3, 4
    student = torch.randn(views * batch, k, dtype=torch.float64)
    teacher = torch.randn(2 * batch, k, dtype=torch.float64) + 2.0
    loss_fn = DINOLoss(k).double()
    assert loss_fn.center.shape == (1, k) and torch.count_nonzero(loss_fn.center) == 0
    assert "center" in loss_fn.state_dict()

    first = loss_fn(student, teacher, 0.04, views)["loss"]
    ce = reference_pairs(student, teacher, 0.04, views, 2)
    assert abs(first.item() - (ce.sum() - ce[0, 0] - ce[1, 1]) / 6) < 1e-12  # the zero centre
    centre = 0.1 * teacher.mean(0, keepdim=True)
    torch.testing.assert_close(loss_fn.center, centre, rtol=0, atol=1e-15)

    second = loss_fn(student, teacher, 0.04, views)["loss"]
    ce = reference_pairs(student, teacher - centre, 0.04, views, 2)
    assert abs(second.item() - (ce.sum() - ce[0, 0] - ce[1, 1]) / 6) < 1e-12  # the updated centre
    torch.testing.assert_close(loss_fn.center, 0.9 * centre + 0.1 * teacher.mean(0, keepdim=True))


def test_gradient_reaches_the_student_only():
    torch.manual_seed(0)
    student = torch.randn(4 * 2, 5, requires_grad=True)
    teacher = torch.randn(2 * 2, 5, requires_grad=True)
    DINOLoss(5)(student, teacher, 0.04, 4)["loss"].backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_half_precision_inputs_compute_in_float32():
    student = torch.randn(6, 5).half()
    teacher = torch.randn(4, 5).bfloat16()
    out = DINOLoss(5)(student, teacher, 0.04, 3)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert DINOLoss(5).center.dtype == torch.float32


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "views", "globals_"),
    [((9, 5), (4, 5), 4, 2), ((8, 5), (6, 5), 4, 2), ((8, 6), (4, 6), 4, 2), ((8, 5), (8, 5), 2, 4)],
)
def test_bad_shapes_are_rejected(student_shape, teacher_shape, views, globals_):
    with pytest.raises(ValueError):
        DINOLoss(5)(torch.zeros(student_shape), torch.zeros(teacher_shape), 0.04, views, globals_)


# ------------------------------------------------------------------------------------------------ collapse signals


def test_collapse_signals_and_warning():
    k, batch, views = 16, 8, 3
    student = torch.zeros(views * batch, k, dtype=torch.float64)

    uniform = DINOLoss(k).double()(student, torch.zeros(2 * batch, k, dtype=torch.float64), 0.04, views)
    assert abs(uniform["teacher_entropy"].item() - math.log(k)) < 1e-12
    assert abs(uniform["teacher_batch_entropy"].item() - math.log(k)) < 1e-12
    assert collapse_warning(signals(uniform)).startswith("uniform collapse")

    one_hot = torch.zeros(2 * batch, k, dtype=torch.float64)
    one_hot[:, 3] = 10.0  # every image on output 3
    one_dim = DINOLoss(k).double()(student, one_hot, 0.04, views)
    assert one_dim["teacher_entropy"].item() < 1e-6 and one_dim["teacher_batch_entropy"].item() < 1e-6
    assert collapse_warning(signals(one_dim)).startswith("one-dimension collapse")

    healthy_logits = 10.0 * torch.eye(k, dtype=torch.float64)  # sharp, each of the 16 rows on its own output
    healthy = DINOLoss(k).double()(student, healthy_logits, 0.04, views)
    assert healthy["teacher_entropy"].item() < 1e-6
    assert abs(healthy["teacher_batch_entropy"].item() - math.log(k)) < 1e-6
    assert collapse_warning(signals(healthy)) is None
    for out in (uniform, one_dim, healthy):
        assert all(not out[name].requires_grad for name in ("teacher_entropy", "teacher_batch_entropy"))


def test_collapse_warning_thresholds():
    log_k = math.log(100)
    assert collapse_warning({"teacher_entropy": 0.96 * log_k, "teacher_batch_entropy": log_k, "log_classes": log_k})
    assert (
        collapse_warning({"teacher_entropy": 0.94 * log_k, "teacher_batch_entropy": log_k, "log_classes": log_k})
        is None
    )
    assert collapse_warning({"teacher_entropy": 0.5, "teacher_batch_entropy": 0.09 * log_k, "log_classes": log_k})
    assert (
        collapse_warning({"teacher_entropy": 0.5, "teacher_batch_entropy": 0.11 * log_k, "log_classes": log_k}) is None
    )


# ------------------------------------------------------------------------------------------------------------ EMA


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.norm = nn.BatchNorm1d(1)


class Wrapped(nn.Module):
    """What DDP looks like from the outside: the model under ``self.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def pair(teacher_value: float, student_value: float) -> tuple[Net, Net]:
    teacher, student = Net().double(), Net().double()
    for net, value in ((teacher, teacher_value), (student, student_value)):
        for p in net.parameters():
            nn.init.constant_(p, value)
    student.norm.running_mean.fill_(5.0)
    student.norm.num_batches_tracked.fill_(3)
    teacher.requires_grad_(False)
    return teacher, student


@pytest.mark.parametrize(("momentum", "expected"), [(0.0, 4.0), (1.0, 2.0), (0.5, 3.0), (0.75, 2.5)])
@pytest.mark.parametrize("wrap", [False, True])
def test_ema_update_hand_values(momentum, expected, wrap):
    teacher, student = pair(2.0, 4.0)
    ema_update(teacher, Wrapped(student) if wrap else student, momentum)
    for name, p in teacher.named_parameters():
        assert torch.equal(p, torch.full_like(p, expected)), name
        assert not p.requires_grad
    assert teacher.norm.running_mean.item() == 5.0 and teacher.norm.num_batches_tracked.item() == 3
    assert student.linear.weight[0, 0].item() == 4.0  # the student is untouched


def test_ema_update_on_heads_with_weight_norm():
    torch.manual_seed(0)
    student = DINOHead(4, out_dim=6, hidden_dim=5, bottleneck_dim=3)
    teacher = DINOHead(4, out_dim=6, hidden_dim=5, bottleneck_dim=3).requires_grad_(False)
    ema_update(teacher, student, 0.0)
    x = torch.randn(2, 4)
    torch.testing.assert_close(teacher(x), student(x), rtol=0, atol=0)


def test_ema_update_rejects_mismatches_and_trainable_teachers():
    teacher, student = pair(2.0, 4.0)
    with pytest.raises(ValueError, match="require grad"):
        ema_update(teacher.requires_grad_(True), student, 0.5)
    with pytest.raises(ValueError, match="differ"):
        ema_update(nn.Linear(2, 1).requires_grad_(False), student, 0.5)


# ------------------------------------------------------------------------------------------------- all-reduce path

# The per-rank worker lives in a module written to tmp_path that loads lafs/dino.py by file path: a spawned child
# unpickles its target by importing the target's module, and importing this test module (hence lafs and timm) costs
# each child over 5 s, against about 2 s for torch alone. fork would be faster still but deadlocks once the parent
# has used torch's CPU thread pool.
WORKER = """
import importlib.util
import sys
from datetime import timedelta

import torch
import torch.distributed as dist


def run(rank, world, dino_path, init_file, out_dir, teachers, views):
    spec = importlib.util.spec_from_file_location("_lafs_dino_under_test", dino_path)
    dino = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = dino  # registered before it runs, as importlib does: its dataclasses look it up
    spec.loader.exec_module(dino)
    dist.init_process_group(
        "gloo", init_method="file://" + init_file, rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        teacher = torch.from_numpy(teachers[rank])
        batch = teacher.shape[0] // 2
        loss_fn = dino.DINOLoss(teacher.shape[1]).double()
        loss_fn(torch.zeros(views * batch, teacher.shape[1], dtype=torch.float64), teacher, 0.04, views)
        torch.save(loss_fn.center, f"{out_dir}/center{rank}.pt")
    finally:
        dist.destroy_process_group()
"""


def test_centre_is_all_reduced_across_processes(tmp_path, monkeypatch):
    import importlib

    import lafs.dino

    world, batch, k, views = 2, 3, 6, 4
    generator = torch.Generator().manual_seed(0)
    # A different teacher batch on each rank (shifted apart so that a rank-local centre could not pass).
    teachers = [torch.randn(2 * batch, k, generator=generator, dtype=torch.float64) + 3.0 * r for r in range(world)]
    (tmp_path / "lafs_dino_dist_worker.py").write_text(WORKER)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned children inherit sys.path
    worker = importlib.import_module("lafs_dino_dist_worker")
    args = (world, lafs.dino.__file__, str(tmp_path / "init"), str(tmp_path), np.stack([t.numpy() for t in teachers]))
    mp.spawn(worker.run, args=(*args, views), nprocs=world, join=True)

    centres = [torch.load(tmp_path / f"center{rank}.pt") for rank in range(world)]
    expected = 0.1 * torch.cat(teachers).mean(0, keepdim=True)
    torch.testing.assert_close(centres[0], centres[1], rtol=0, atol=0)
    torch.testing.assert_close(centres[0], expected, rtol=0, atol=1e-14)


# ------------------------------------------------------------------------------------------- nothing learned


# The run that learned nothing (real faces, K = 1024): loss 6.72 -> 6.74 of log K = 6.93, teacher at 0.94 log K.
FLAT = [6.72, 6.71, 6.73, 6.72, 6.74, 6.73, 6.74, 6.73, 6.74, 6.74]


def test_stall_warning_fires_on_a_flat_loss_with_a_near_uniform_teacher():
    warning = stall_warning(FLAT, [0.94] * 10, progress=0.5)
    # w = min(5, 10 // 3) = 3: mean(6.72, 6.71, 6.73) = 6.72 -> mean(6.73, 6.74, 6.74) = 6.73667, +0.25 %
    assert warning is not None and "\n" not in warning
    assert warning.startswith("nothing learned after 50% of the run: DINO loss 6.720 -> 6.737 (+0.2%)")
    for advice in ("more steps", "optim.lr", "dino.out_dim", "dino.teacher_temp", "optim.schedules=relative", "data"):
        assert advice in warning


def test_stall_warning_waits_for_a_meaningful_part_of_the_run():
    assert stall_warning(FLAT, [0.94] * 10, progress=0.19) is None  # under 20 % of the steps
    assert stall_warning(FLAT[:5], [0.94] * 5, progress=0.9) is None  # under 6 log points
    assert stall_warning(FLAT[:6], [0.94] * 6, progress=0.9) is not None


def test_stall_warning_thresholds():
    """Change of the windowed mean loss: below 2 % fires, above does not; teacher entropy: above 0.9 log K fires."""

    def moved(change: float) -> list[float]:  # 6 points, w = 2: the last two points moved by ``change``
        return [5.0, 5.0, 5.0, 5.0, 5.0 * (1 + change), 5.0 * (1 + change)]

    assert stall_warning(moved(-0.019), [0.95] * 6, 0.5) is not None
    assert stall_warning(moved(-0.021), [0.95] * 6, 0.5) is None  # it learns
    assert stall_warning(moved(+0.021), [0.95] * 6, 0.5) is None  # it moves (collapse_warning judges which way)
    assert stall_warning(moved(0.0), [0.95] * 4 + [0.91, 0.91], 0.5) is not None
    assert stall_warning(moved(0.0), [0.95] * 4 + [0.89, 0.89], 0.5) is None  # the teacher says something


def test_stall_watch_warns_once_and_again_at_the_end():
    def terms(loss: float, ratio: float = 0.94) -> dict[str, float]:
        return {"dino_loss": loss, "teacher_entropy": ratio * 6.93, "log_classes": 6.93}

    watch = StallWatch()
    fired = [watch.observe(terms(loss), (i + 1) / 10, 10 * (i + 1)) for i, loss in enumerate(FLAT)]
    assert [i for i, warning in enumerate(fired) if warning] == [5]  # the 6th point, at 60 % of the run
    assert watch.warned_at == 60 and watch.closing().startswith("nothing learned after 100% of the run")
    for _ in range(10):  # the loss falls after the warning
        watch.observe(terms(5.0, 0.7), 1.0, 100)
    assert watch.closing() == "the loss has moved since the nothing-learned warning of step 60"
    assert StallWatch().closing() is None
