"""Schedules: values that follow the training step or epoch, as plain functions the training loop evaluates.

Nothing here reads a config or a clock; callers pass the step (or fractional epoch) and get a float back.

DINO's (used by pretraining, fine-tuning and the landmark predictor):

- :func:`cosine_schedule`: DINO's ``cosine_scheduler`` value at one step (learning rate, weight decay, teacher
  momentum), with an optional linear warm-up.
- :func:`teacher_temperature`: DINO's teacher temperature, linear over the warm-up then held.
- :func:`warmup_cosine`: the learning rate of every stage (pretraining, fine-tuning, the landmark predictor) from
  its recipe's numbers: batch scaling rule, warm-up epochs (stretched to the run), cosine to the minimum.

The fine-tuning regularisers' weights lambda(t), as a small declarative dataclass (:class:`WeightSchedule`) that is a
pure function of the (fractional) epoch. Kinds (``WeightSchedule.kind``):

- ``constant``: ``value`` throughout.
- ``piecewise``: ``values[i]`` from epoch ``boundaries[i - 1]`` on, ``values[0]`` before the first boundary. LAFS's
  landmark regulariser is ``boundaries=[8, 14, 21, 28]``, ``values=[1000, 100, 1, 0.11, 0]`` (0-based whole epochs:
  epoch 7.9 still has epoch 7's weight).
- ``start_at``: 0 before ``start_epoch``, ``value`` from then on (CoReFace switches on at epoch index 7).
- ``warmup``: 0 before ``start_epoch``, then linear up to ``value`` over ``warmup_epochs``.

Every epoch-valued field (``boundaries``, ``start_epoch``, ``warmup_epochs``) is read in ``WeightSchedule.unit``:
``epochs``, or ``fraction`` of the run's ``optim.epochs``. :meth:`WeightSchedule.in_run` turns a schedule into this
run's epochs (fractions times the run's length; epochs times the stretch factor of ``optim.schedules=relative``).

Recipe lengths. The defaults copy epoch-valued keys from published recipes; under ``optim.schedules=relative`` each
is read as written for its recipe's length (below, and ``recipe_epochs`` of each regulariser config) and stretched
to the run's ``optim.epochs``.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from lafs.errors import ConfigError

__all__ = [
    "LAFS_FINETUNE_EPOCHS",
    "LAFS_PRETRAIN_EPOCHS",
    "LrScaling",
    "ScheduleKind",
    "ScheduleUnit",
    "WarmupCosine",
    "WeightSchedule",
    "cosine_schedule",
    "teacher_temperature",
    "teacher_temperature_per_epoch",
    "warmup_cosine",
]

LAFS_PRETRAIN_EPOCHS = 41  # LAFS lafs_train.py: 10 LR warm-up epochs, 30 teacher-temperature epochs, 1 frozen
LAFS_FINETUNE_EPOCHS = 34  # LAFS train_largescale.py: 5 LR warm-up epochs, landmark weight steps at 8/14/21/28

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


def teacher_temperature_per_epoch(epoch: int, warmup_epochs: int, start: float = 0.07, end: float = 0.04) -> float:
    """The released schedule: ``np.linspace(start, end, warmup_epochs)[epoch]`` during the warm-up, then ``end``.

    LAFS (and DINO) build this table once and index it with the epoch, so the temperature moves once per epoch and
    reaches ``end`` at epoch ``warmup_epochs - 1``, one epoch before `teacher_temperature`'s per-step ramp does.
    """
    if epoch < 0 or warmup_epochs < 0:
        raise ValueError(f"teacher_temperature_per_epoch needs both >= 0, got {epoch=}, {warmup_epochs=}")
    if epoch >= warmup_epochs:
        return float(end)
    if warmup_epochs == 1:
        return float(start)  # np.linspace(start, end, 1) == [start]
    return float(start + (end - start) * epoch / (warmup_epochs - 1))


# ------------------------------------------------------------------------------------------- learning rate --

LrScaling = Literal["none", "linear", "sqrt"]


@dataclass(frozen=True)
class WarmupCosine:
    """A learning rate per optimiser step: linear warm-up from 0 to ``peak``, then DINO's cosine to ``end``."""

    peak: float
    end: float
    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        return cosine_schedule(step, self.total_steps, self.peak, self.end, self.warmup_steps)


def warmup_cosine(
    lr: float,
    min_lr: float,
    warmup_epochs: float,
    steps_per_epoch: int,
    total_steps: int,
    stretch: float = 1.0,
    scaling: LrScaling = "none",
    total_batch: int = 1,
    reference_batch: int = 1,
) -> WarmupCosine:
    """The learning-rate schedule every stage trains with, from its recipe's numbers.

    ``lr`` is the rate for ``reference_batch`` images per optimiser step; the run's ``total_batch`` (processes x batch
    x accumulation) scales it by ``scaling``: ``linear`` (DINO's rule, LAFS pretraining: 256 images), ``sqrt`` (LAFS
    fine-tuning) or ``none``. The warm-up lasts ``warmup_epochs x stretch`` epochs (``stretch``: `OptimConfig.stretch`
    from the recipe's length to the run's), rounded to whole steps; the cosine ends at ``min_lr`` at ``total_steps``.
    """
    if scaling == "linear":
        peak = lr * (total_batch / reference_batch)  # DINO's lr * batch / 256 is the same float: 256 is a power of 2
    elif scaling == "sqrt":
        peak = lr * math.sqrt(total_batch / reference_batch)
    else:
        peak = lr
    return WarmupCosine(peak, min_lr, round(warmup_epochs * stretch * steps_per_epoch), total_steps)


# ---------------------------------------------------------------------------------------- regulariser weights --


ScheduleKind = Literal["constant", "piecewise", "start_at", "warmup"]
ScheduleUnit = Literal["epochs", "fraction"]


@dataclass
class WeightSchedule:
    """A regulariser's weight lambda as a function of the (fractional) epoch; see the kinds above."""

    kind: ScheduleKind = "constant"  # constant unless the method's paper switches or decays its weight
    value: float = 1.0  # the weight of constant, start_at and warmup (after the warm-up)
    boundaries: list[float] = field(default_factory=list)  # piecewise: the epochs at which the next value starts
    values: list[float] = field(default_factory=list)  # piecewise: one more value than boundaries
    start_epoch: float = 0.0  # start_at / warmup: the weight is 0 before this epoch
    warmup_epochs: float = 0.0  # warmup: epochs of the linear ramp from 0 to value
    # What boundaries, start_epoch and warmup_epochs count: epochs, or fractions of the run (0.25 = a quarter of
    # optim.epochs), which keeps a schedule's proportions whatever the run's length.
    unit: ScheduleUnit = "epochs"

    def validate(self, prefix: str = "weight.") -> None:
        """One-line `ConfigError` naming the bad key (``prefix``: this schedule's dotted key, from the loader)."""
        if self.kind not in _KINDS:
            raise ConfigError(f"{prefix}kind must be one of {', '.join(_KINDS)}, got {self.kind!r}")
        if self.unit not in ("epochs", "fraction"):
            raise ConfigError(f"{prefix}unit must be epochs or fraction, got {self.unit!r}")
        if self.kind == "piecewise":
            if len(self.values) != len(self.boundaries) + 1:
                raise ConfigError(
                    f"{prefix}values: {len(self.values)} values for {len(self.boundaries)} boundaries "
                    "(a piecewise weight needs one more value than boundaries)"
                )
            if list(self.boundaries) != sorted(self.boundaries):
                raise ConfigError(f"{prefix}boundaries must increase, got {self.boundaries}")
        for key in ("start_epoch", "warmup_epochs"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{prefix}{key} must be >= 0, got {getattr(self, key)}")
        if self.unit == "fraction":
            for key in ("boundaries", "start_epoch", "warmup_epochs"):
                times = getattr(self, key)
                if any(not 0 <= t <= 1 for t in (times if isinstance(times, list) else [times])):
                    raise ConfigError(f"{prefix}{key} is a fraction of the run (unit=fraction): in [0, 1], got {times}")
        for key, weights in (("value", [self.value]), ("values", self.values)):
            if any(not math.isfinite(v) or v < 0 for v in weights):
                raise ConfigError(f"{prefix}{key}: weights must be finite and >= 0, got {getattr(self, key)}")

    def __call__(self, epoch: float) -> float:
        """lambda at ``epoch`` (fractional: step / steps_per_epoch); a fraction-unit schedule needs `in_run` first."""
        if self.unit != "epochs":
            raise ValueError("a weight schedule in fractions of the run is read through in_run(run_epochs)")
        return _KINDS[self.kind](self, epoch)

    def in_run(self, run_epochs: float, stretch: float = 1.0) -> WeightSchedule:
        """This schedule in the run's epochs: fractions times ``run_epochs``, epochs times ``stretch`` (the run's
        length over the recipe's under ``optim.schedules=relative``, else 1)."""
        scale = run_epochs if self.unit == "fraction" else stretch
        return dataclasses.replace(
            self,
            unit="epochs",
            boundaries=[b * scale for b in self.boundaries],
            start_epoch=self.start_epoch * scale,
            warmup_epochs=self.warmup_epochs * scale,
        )

    def first_active(self) -> float:
        """The first time (in ``unit``) from which the weight is > 0; inf when it never is."""
        if self.kind == "piecewise":
            starts = [0.0, *self.boundaries]
            return next((float(t) for t, v in zip(starts, self.values, strict=True) if v > 0), math.inf)
        if self.value <= 0:
            return math.inf
        return 0.0 if self.kind == "constant" else float(self.start_epoch)

    def describe(self) -> str:
        """The epoch-valued fields of this kind, for a log line (``start_epoch 7``, ``boundaries [8, 14]``)."""
        if self.kind == "piecewise":
            return "boundaries [" + ", ".join(f"{b:.4g}" for b in self.boundaries) + "]"
        if self.kind == "warmup":
            return f"start_epoch {self.start_epoch:.4g}, warmup_epochs {self.warmup_epochs:.4g}"
        return f"start_epoch {self.start_epoch:.4g}" if self.kind == "start_at" else "constant"


def _constant(s: WeightSchedule, epoch: float) -> float:
    return s.value


def _piecewise(s: WeightSchedule, epoch: float) -> float:
    # The epoch itself, not its floor: on whole-epoch boundaries both give the papers' steps (epoch 7.9 keeps
    # epoch 7's weight), and a boundary stretched to 10.5 epochs switches half-way through epoch 10.
    return s.values[bisect.bisect_right(s.boundaries, epoch)]


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
