"""Regulariser weights lambda(t) as small declarative objects: a pure function of the (fractional) epoch.

Kinds (``WeightSchedule.kind``):

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
