"""DINO self-distillation as LAFS uses it: projection head, loss with centring and EMA teacher.

DINO (Caron et al., 2021) trains a *student* network to match the output distribution of a *teacher* network that is
an exponential moving average (EMA) of the student; nothing is labelled. Both networks end in a :class:`DINOHead`
whose K outputs are read as a softmax over K "prototype" classes. The teacher sees only the global views of an image,
the student sees every view, and the loss (:class:`DINOLoss`) is the cross-entropy from each teacher global to each
*other* student view. Collapse is avoided by two opposing tricks on the teacher: *centring* (subtracting a running
mean ``center`` of its logits, which pushes towards uniform) and *sharpening* (a low temperature, which pushes towards
one-hot). :func:`collapse_warning` reads the two entropies the loss reports to tell which one has won.

In LAFS (arXiv 2403.08161; szlbiubiubiu/LAFS_CVPR2024 ``lafs_train.py``; see ``docs/losses.md`` section 5) the
views are landmark-token views of a face: 2 globals (all 196 landmarks) and 8 locals (36 landmarks drawn with
replacement), so the loss averages 2 * 10 - 2 = 18 (teacher, student) pairs. LAFS defaults:

- student temperature tau_s = 0.1;
- teacher temperature tau_t warmed *from 0.07 down to 0.04* over the first 30 epochs
  (``lafs.schedules.teacher_temperature``), the reverse of DINO's usual 0.04 -> 0.07: LAFS starts the teacher softer
  and sharpens it;
- teacher EMA momentum following a cosine from 0.996 to 1 over training (``lafs.schedules.cosine_schedule``,
  :func:`ema_update`);
- centre momentum 0.9 (the centre is all-reduced across processes);
- head out_dim 100 000 in LAFS (DINO's default is 65 536), hidden 2048, bottleneck 256, 3 layers, last layer frozen
  for the first epoch (:meth:`DINOHead.cancel_last_layer_gradients`).

Following the project contracts, nothing here reads an epoch or a config: scheduled values (teacher temperature,
momentum) are plain functions of the global step that the training loop evaluates and passes in, and the only
persistent state, the centre, is a registered buffer so that ``accelerator.save_state`` checkpoints it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = [
    "DINOHead",
    "DINOLoss",
    "StallWatch",
    "collapse_warning",
    "ema_update",
    "stall_warning",
]


class DINOHead(nn.Module):
    """DINO projection head: MLP -> L2-normalise -> weight-normalised linear layer without bias.

    The MLP has ``num_layers`` Linear layers with GELU between them (in -> hidden -> ... -> bottleneck; a single layer
    maps in -> bottleneck directly). Its weights are trunc-normal (std 0.02, cut at +-2 absolute as in DINO, so in
    effect plain normal), its biases zero. The last layer is ``Linear(bottleneck_dim, out_dim, bias=False)``
    reparametrised as ``weight = g * v / ||v||`` (row-wise) with ``torch.nn.utils.parametrizations.weight_norm``; its
    magnitude ``g`` (``parametrizations.weight.original0``) starts at 1 and, with ``norm_last_layer``, is frozen, so
    every output is a cosine between the normalised bottleneck and a unit prototype. As in DINO, the direction ``v``
    keeps ``nn.Linear``'s default init (only its direction matters).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        num_layers = max(num_layers, 1)
        if num_layers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(num_layers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.mlp.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False), name="weight", dim=0)
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) -> (B, out_dim) logits (before any temperature)."""
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)

    def cancel_last_layer_gradients(self) -> None:
        """Drop the last layer's gradients (DINO's ``freeze_last_layer``: call after backward in the first epoch)."""
        for param in self.last_layer.parameters():
            param.grad = None


class DINOLoss(nn.Module):
    """DINO cross-entropy between teacher globals and every other student view, with a running teacher centre.

    ``forward(student_out, teacher_out, teacher_temp, num_views, num_global)``:

    - ``student_out`` is (num_views * B, out_dim), view-major (all of view 0's batch, then view 1's, ...), the
      ``num_global`` global views first; ``teacher_out`` is (num_global * B, out_dim), the teacher's outputs for the
      same globals in the same order.
    - ``P_t^a = softmax((teacher_a - center) / teacher_temp)`` (no gradient), ``log P_s^v = log_softmax(student_v /
      student_temp)``, and ``dino_loss = (1 / n_terms) sum_a sum_{v != a} mean_b [-sum_k P_t^a log P_s^v]`` with
      ``n_terms = num_global * num_views - num_global`` (18 for 2 + 8): a view is never compared with itself.
    - Afterwards (the loss above uses the old centre) ``center <- m * center + (1 - m) * mean(teacher_out)``, the mean
      over all rows of ``teacher_out`` and, when ``torch.distributed`` is initialised, over all processes (sum,
      all-reduce, divide by world size * local rows, as DINO does; every process must pass the same number of rows).

    Returns ``dino_loss`` and ``loss`` (the same tensor) plus detached collapse signals: ``teacher_entropy`` (mean
    per-sample entropy of ``P_t``, nats; near log K means collapse to uniform), ``teacher_batch_entropy`` (entropy of
    the batch-mean ``P_t`` over this process's rows; near 0 means collapse to one dimension) and ``log_classes``
    (log K). Computation runs in at least float32 whatever the input dtype (fp16/bf16 under autocast).
    """

    center: Tensor

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self,
        student_out: Tensor,
        teacher_out: Tensor,
        teacher_temp: float,
        num_views: int,
        num_global: int = 2,
    ) -> dict[str, Tensor]:
        batch = self._check_shapes(student_out, teacher_out, num_views, num_global)
        dtype = torch.promote_types(student_out.dtype, torch.float32)

        student_logp = F.log_softmax(student_out.to(dtype) / self.student_temp, dim=-1).view(num_views, batch, -1)
        with torch.no_grad():
            teacher_logits = (teacher_out.detach().to(dtype) - self.center.to(dtype)) / teacher_temp
            teacher_logq = F.log_softmax(teacher_logits, dim=-1)
            teacher_q = teacher_logq.exp()
            teacher_entropy = -(teacher_q * teacher_logq).sum(-1).mean()
            teacher_batch_entropy = torch.special.entr(teacher_q.mean(0)).sum()
            teacher_q = teacher_q.view(num_global, batch, -1)

        total = student_out.new_zeros((), dtype=dtype)
        n_terms = 0
        for a in range(num_global):
            for v in range(num_views):
                if v == a:
                    continue
                total = total + torch.sum(-teacher_q[a] * student_logp[v], dim=-1).mean()
                n_terms += 1
        loss = total / n_terms

        self.update_center(teacher_out)
        log_classes = torch.tensor(math.log(self.out_dim), dtype=dtype, device=student_out.device)
        return {
            "dino_loss": loss,
            "loss": loss,
            "teacher_entropy": teacher_entropy,
            "teacher_batch_entropy": teacher_batch_entropy,
            "log_classes": log_classes,
        }

    @torch.no_grad()
    def update_center(self, teacher_out: Tensor) -> None:
        """EMA of the teacher's mean logit, all-reduced across processes when ``torch.distributed`` is running."""
        batch_sum = teacher_out.detach().to(torch.promote_types(teacher_out.dtype, torch.float32)).sum(0, keepdim=True)
        rows = teacher_out.shape[0]
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            rows *= dist.get_world_size()
        batch_center = (batch_sum / rows).to(self.center.dtype)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)

    def _check_shapes(self, student_out: Tensor, teacher_out: Tensor, num_views: int, num_global: int) -> int:
        if not 1 <= num_global <= num_views or num_views < 2:
            raise ValueError(
                f"DINOLoss needs 1 <= num_global <= num_views and num_views >= 2, got {num_global=}, {num_views=}"
            )
        if student_out.ndim != 2 or student_out.shape[-1] != self.out_dim or student_out.shape[0] % num_views:
            raise ValueError(
                f"student_out must be (num_views * B, {self.out_dim}) with {num_views=}, got {tuple(student_out.shape)}"
            )
        batch = student_out.shape[0] // num_views
        if tuple(teacher_out.shape) != (num_global * batch, self.out_dim):
            raise ValueError(
                f"teacher_out must be (num_global * B, out_dim) = {(num_global * batch, self.out_dim)}, "
                f"got {tuple(teacher_out.shape)}"
            )
        return batch


def collapse_warning(signals: dict[str, float]) -> str | None:
    """A one-line warning when the teacher outputs look collapsed, else None.

    ``signals`` holds ``teacher_entropy``, ``teacher_batch_entropy`` and ``log_classes`` as returned by
    :class:`DINOLoss` (floats or 0-d tensors). Uniform collapse: per-sample entropy above 0.95 log K (the teacher says
    nothing about any image). One-dimension collapse: the entropy of the batch-mean distribution below 0.1 log K
    (every image lands on the same few outputs).
    """
    entropy = float(signals["teacher_entropy"])
    batch_entropy = float(signals["teacher_batch_entropy"])
    log_k = float(signals["log_classes"])
    messages = []
    if entropy > 0.95 * log_k:
        messages.append(
            f"uniform collapse: teacher per-sample entropy {entropy:.3f} > 0.95 * log K = {0.95 * log_k:.3f}"
        )
    if batch_entropy < 0.1 * log_k:
        messages.append(
            f"one-dimension collapse: teacher batch-mean entropy {batch_entropy:.3f} < 0.1 * log K = {0.1 * log_k:.3f}"
        )
    return "; ".join(messages) or None


def stall_warning(
    losses: Sequence[float],
    entropy_ratios: Sequence[float],
    progress: float,
    *,
    min_progress: float = 0.2,
    min_points: int = 6,
    max_change: float = 0.02,
    min_entropy: float = 0.9,
) -> str | None:
    """A one-line warning, with what to try, when pretraining has learned nothing so far; else None.

    ``losses``: the DINO loss at each log point so far, oldest first; ``entropy_ratios``: the teacher's per-sample
    entropy over log K at the same points; ``progress``: the fraction of the run's steps done. It fires once
    ``progress >= min_progress`` with at least ``min_points`` log points, when the mean loss of the last ``w`` points
    differs from that of the first ``w`` by less than ``max_change`` (relative; ``w = min(5, points // 3)``, so
    single noisy points do not decide) and the teacher's mean entropy over the last ``w`` points is above
    ``min_entropy`` log K: a teacher that says almost nothing about any image, and a student that stopped moving.

    The thresholds sit between the two runs measured: on 1,368 real faces at small scale the loss went 6.72 ->
    6.74 (+0.3 %) with the teacher at 0.94 log K, and nothing was learned; the synthetic demo
    (configs/pretrain/demo.yaml), which learns, fell 9.5 % from its first to its last five log points (6.48 ->
    5.86) with the teacher at 0.67-0.85 log K, and single log points there scatter by about 5 %, hence windows.
    (`collapse_warning` flags every log point above 0.95 log K; this catches the slower failure below it.)
    """
    points = min(len(losses), len(entropy_ratios))
    if progress < min_progress or points < max(min_points, 2):
        return None
    w = max(1, min(5, points // 3))
    early, late = sum(losses[:w]) / w, sum(losses[points - w : points]) / w
    entropy = sum(entropy_ratios[points - w : points]) / w
    change = (late - early) / abs(early) if early else math.inf
    if abs(change) >= max_change or entropy <= min_entropy:
        return None
    return (
        f"nothing learned after {progress:.0%} of the run: DINO loss {early:.3f} -> {late:.3f} ({change:+.1%}) with "
        f"the teacher near uniform (entropy {entropy:.2f} of log K). Try more steps, a higher optim.lr, fewer "
        "prototypes (dino.out_dim), a sharper teacher (lower dino.teacher_temp / dino.warmup_teacher_temp, or "
        "optim.schedules=relative so its warm-up fits a short run), and check the data (faces, landmarks)"
    )


@dataclass
class StallWatch:
    """The log points of one pretraining run, fed to `stall_warning`: it warns once, and once more at the end."""

    losses: list[float] = field(default_factory=list)
    entropy_ratios: list[float] = field(default_factory=list)
    warned_at: int | None = None  # the step of the warning, once it has fired

    def observe(self, terms: Mapping[str, float], progress: float, step: int) -> str | None:
        """Add the log point of ``step`` (`DINOLoss`'s ``dino_loss``, ``teacher_entropy``, ``log_classes``);
        returns the warning the first time it fires, else None."""
        self.losses.append(float(terms["dino_loss"]))
        self.entropy_ratios.append(float(terms["teacher_entropy"]) / float(terms["log_classes"]))
        if self.warned_at is not None:
            return None
        warning = stall_warning(self.losses, self.entropy_ratios, progress)
        if warning is not None:
            self.warned_at = step
        return warning

    def closing(self) -> str | None:
        """For the end of a run that warned: the warning over the whole run, or that it no longer holds."""
        if self.warned_at is None:
            return None
        return stall_warning(self.losses, self.entropy_ratios, 1.0) or (
            f"the loss has moved since the nothing-learned warning of step {self.warned_at}"
        )


def _strip_wrappers(name: str) -> str:
    """``module.`` (DDP / DataParallel) and ``_orig_mod.`` (torch.compile) prefixes removed, repeatedly."""
    prefixes = ("module.", "_orig_mod.")
    while name.startswith(prefixes):
        name = name.split(".", 1)[1]
    return name


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``t <- momentum * t + (1 - momentum) * s`` for every teacher parameter; teacher buffers copied from the student.

    Parameters and buffers are matched by name; either network may be wrapped (DDP's ``module.`` prefix and
    torch.compile's ``_orig_mod.`` are stripped from the names). Every teacher parameter must have
    ``requires_grad = False`` (the teacher is never trained by gradient): a trainable one raises ``ValueError``, as
    does any name missing on either side. ``momentum`` 0 copies the student, 1 keeps the teacher.
    """
    student_params = {_strip_wrappers(n): p for n, p in student.named_parameters()}
    teacher_params = {_strip_wrappers(n): p for n, p in teacher.named_parameters()}
    if student_params.keys() != teacher_params.keys():
        missing = sorted(student_params.keys() ^ teacher_params.keys())
        raise ValueError(f"ema_update: teacher and student parameters differ: {missing[:5]}")
    trainable = [n for n, p in teacher_params.items() if p.requires_grad]
    if trainable:
        raise ValueError(
            f"ema_update: teacher parameters must not require grad (call requires_grad_(False)): {trainable[:5]}"
        )
    # Multi-tensor ops: a few kernel launches for all parameters instead of two per parameter (~300 at ViT-B).
    targets: list[torch.Tensor] = list(teacher_params.values())  # the _foreach ops take list[Tensor], not Parameter
    sources = [student_params[name].detach().to(t.dtype) for name, t in teacher_params.items()]
    torch._foreach_mul_(targets, momentum)
    torch._foreach_add_(targets, sources, alpha=1.0 - momentum)

    student_buffers = {_strip_wrappers(n): b for n, b in student.named_buffers()}
    for name, t in teacher.named_buffers():
        source = student_buffers.get(_strip_wrappers(name))
        if source is None:
            raise ValueError(f"ema_update: teacher buffer {name!r} not found in the student")
        t.copy_(source)
