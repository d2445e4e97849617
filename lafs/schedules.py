"""Schedules: values that follow the training step or epoch, as plain functions the training loop evaluates.

Nothing here reads a config or a clock; callers pass the step (or fractional epoch) and get a float back.

DINO's (used by pretraining, fine-tuning and the landmark predictor):

- :func:`cosine_schedule`: DINO's ``cosine_scheduler`` value at one step (learning rate, weight decay, teacher
  momentum), with an optional linear warm-up.
- :func:`teacher_temperature`: DINO's teacher temperature, linear over the warm-up then held.

The fine-tuning regularisers' weights lambda(t), as a small declarative dataclass (:class:`WeightSchedule`) that is a
pure function of the (fractional) epoch. Kinds (``WeightSchedule.kind``):

- ``constant``: ``value`` throughout.
- ``piecewise``: ``values[i]`` from epoch ``boundaries[i - 1]`` on (whole epochs, 0-based), ``values[0]`` before
  the first boundary. LAFS's landmark regulariser is ``boundaries=[8, 14, 21, 28]``,
  ``values=[1000, 100, 1, 0.11, 0]``.
- ``start_at``: 0 before ``start_epoch``, ``value`` from then on (CoReFace switches on at epoch index 7).
- ``warmup``: 0 before ``start_epoch``, then linear up to ``value`` over ``warmup_epochs``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from lafs.errors import ConfigError

__all__ = ["ScheduleKind", "WeightSchedule", "cosine_schedule", "teacher_temperature"]

# ------------------------------------------------------------------------------------------------------- DINO --


def cosine_schedule(
    step: int,
    total_steps: int,
    start: float,
    end: float,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
) -> float:
    """The value at ``step`` of DINO's ``cosine_scheduler`` array, computed without building the array.

    Steps ``0 .. warmup_steps - 1`` go linearly from ``warmup_start`` to ``start`` (``np.linspace``: both ends
    included). The remaining ``n = total_steps - warmup_steps`` steps follow ``end + (start - end) * (1 + cos(pi * i
    / n)) / 2`` for ``i = 0 .. n - 1``; as in DINO, the last step (``i = n - 1``) is within ``(start - end) * pi^2 /
    (4 n^2)`` of ``end`` but not equal to it. Steps at or beyond ``total_steps`` return ``end`` (the same formula at
    ``i = n``), so the value is held there. LAFS uses it for the teacher momentum (0.996 -> 1), the learning rate and
    the weight decay.
    """
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps or step < 0:
        raise ValueError(
            f"cosine_schedule needs 0 <= step, 0 <= warmup_steps <= total_steps, total_steps >= 1; got "
            f"{step=}, {warmup_steps=}, {total_steps=}"
        )
    if step >= total_steps:
        return float(end)
    if step < warmup_steps:
        if step == warmup_steps - 1:  # np.linspace sets its last element to the stop value exactly
            return float(start) if warmup_steps > 1 else float(warmup_start)
        return float(warmup_start + step * ((start - warmup_start) / (warmup_steps - 1)))
    i, n = step - warmup_steps, total_steps - warmup_steps
    return float(end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * i / n)))


def teacher_temperature(step: int, warmup_steps: int, start: float = 0.07, end: float = 0.04) -> float:
    """Teacher temperature: linear from ``start`` at step 0 to ``end`` at ``warmup_steps``, then ``end``.

    LAFS's defaults warm *down* from 0.07 to 0.04 over 30 epochs (``warmup_teacher_temp = 0.07``, ``teacher_temp =
    0.04`` in ``lafs_train.py``), the reverse of DINO's usual 0.04 -> 0.07: a softer teacher early, sharpened later.
    Pass the global step and ``warmup_steps = 30 * steps_per_epoch``. (DINO itself indexes an epoch-level
    ``np.linspace(start, end, warmup_epochs)``, which reaches ``end`` one epoch earlier; the difference is a
    per-step refinement of the same ramp.)
    """
    if step < 0 or warmup_steps < 0:
        raise ValueError(f"teacher_temperature needs step >= 0 and warmup_steps >= 0, got {step=}, {warmup_steps=}")
    if step >= warmup_steps:
        return float(end)
    return float(start + (end - start) * step / warmup_steps)


# ---------------------------------------------------------------------------------------- regulariser weights --



ScheduleKind = Literal["constant", "piecewise", "start_at", "warmup"]


@dataclass
class WeightSchedule:
    kind: ScheduleKind = "constant"  # constant unless the method's paper switches or decays its weight
    value: float = 1.0  # the weight of constant, start_at and warmup (after the warm-up)
    boundaries: list[float] = field(default_factory=list)  # piecewise: the epochs at which the next value starts
    values: list[float] = field(default_factory=list)  # piecewise: one more value than boundaries
    start_epoch: float = 0.0  # start_at / warmup: the weight is 0 before this epoch
    warmup_epochs: float = 0.0  # warmup: epochs of the linear ramp from 0 to value

    def validate(self) -> None:
        if self.kind == "piecewise":
            if len(self.values) != len(self.boundaries) + 1:
                raise ConfigError(
                    f"piecewise weight: {len(self.values)} values for {len(self.boundaries)} boundaries "
                    "(need one more value than boundaries)"
                )
            if list(self.boundaries) != sorted(self.boundaries):
                raise ConfigError(f"piecewise weight: boundaries must increase, got {self.boundaries}")
        if self.start_epoch < 0 or self.warmup_epochs < 0:
            raise ConfigError("weight schedule: start_epoch and warmup_epochs must be >= 0")
        if any(not math.isfinite(v) or v < 0 for v in [self.value, *self.values]):
            raise ConfigError("weight schedule: weights must be finite and >= 0")

    def __call__(self, epoch: float) -> float:
        """lambda at ``epoch`` (fractional: step / steps_per_epoch)."""
        return _KINDS[self.kind](self, epoch)


def _constant(s: WeightSchedule, epoch: float) -> float:
    return s.value


def _piecewise(s: WeightSchedule, epoch: float) -> float:
    # Whole epochs, as the papers count them: epoch 7.9 still has epoch 7's weight.
    return s.values[bisect.bisect_right(s.boundaries, math.floor(epoch))]


def _start_at(s: WeightSchedule, epoch: float) -> float:
    return s.value if epoch >= s.start_epoch else 0.0


def _warmup(s: WeightSchedule, epoch: float) -> float:
    if epoch < s.start_epoch:
        return 0.0
    if s.warmup_epochs == 0:
        return s.value
    return s.value * min(1.0, (epoch - s.start_epoch) / s.warmup_epochs)


_KINDS: dict[str, Callable[[WeightSchedule, float], float]] = {
    "constant": _constant,
    "piecewise": _piecewise,
    "start_at": _start_at,
    "warmup": _warmup,
}
