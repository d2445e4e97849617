"""`fit`: the one training loop. Every stage (pretraining, fine-tuning, the landmark predictor) runs through it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from lafs.config import save_config
from lafs.engine.accelerator import build_accelerator, processes_on_this_node, thread_count, torch_settings
from lafs.engine.batches import left_out_per_epoch, make_loader, steps_per_epoch, training_batches
from lafs.engine.checkpoints import (
    BatchLayout,
    TrainState,
    check_same_layout,
    remove_unfinished,
    resume,
    resume_candidates,
    save_checkpoint,
)
from lafs.engine.config import ClipMode, RunConfig, check_resumed_config
from lafs.engine.curves import plot_learning_curve
from lafs.engine.memory import check_memory, device_free_memory, estimate_memory
from lafs.engine.run_dir import RunLock, check_fresh_start, check_run_directory, check_shared_run_directory
from lafs.engine.run_log import Progress, RunLog, write_weights_hash
from lafs.engine.task import RunContext, Task, TrainingParts
from lafs.errors import LafsError

logger = logging.getLogger("lafs.engine")
NONFINITE = "nonfinite_skipped"  # the loss term a step that skipped its update carries (1.0), and logs


class TrainingDiverged(LafsError):
    """The loss or the gradients stayed NaN or infinite for more steps in a row than allowed."""


class NonFiniteWeights(TrainingDiverged):
    """The weights themselves went NaN or infinite: no checkpoint or export of them is written."""


@dataclass
class RunSummary:
    """What a finished `fit` reports: steps done, wall time, the last logged terms, the last validation, what was
    exported where and the run directory (its best/ and tensorboard/ folders, when there)."""

    steps: int
    seconds: float
    last: dict[str, float] = field(default_factory=dict)
    exported: dict[str, Path] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    run_dir: Path | None = None

    def line(self, name: str) -> str:
        """One line: ``name: N steps in S s; losses; validation accuracies (best); exports; TensorBoard``."""
        parts = [f"{name}: {self.steps} steps in {self.seconds:.0f} s"]
        parts.append(", ".join(f"{k} {v:.4f}" for k, v in self.last.items() if k.endswith("loss")))
        parts.append(", ".join(f"{k} {100 * v:.2f} %" for k, v in self.validation.items() if k.endswith("accuracy")))
        parts += [f"{k} -> {v}" for k, v in self.exported.items()]
        if self.run_dir is not None:
            best = self.run_dir / "best"
            parts.append(f"best (by mean_accuracy) -> {best}" if (best / "best.json").is_file() else "")
            board = self.run_dir / "tensorboard"
            parts.append(f"TensorBoard: tensorboard --logdir {board}" if board.is_dir() else "")
        return "; ".join(part for part in parts if part)


def fit(cfg: RunConfig, task: Task) -> RunSummary:
    """Train ``task`` as ``cfg`` says, on every process this program was launched as; returns the summary.

    Writes the run directory ``cfg.output_dir``: config.yaml, checkpoints/step_NNNNNNNN (rotated, atomic),
    log.jsonl, tensorboard/ and whatever the task exports. A run with a checkpoint there continues from it
    (``resume=auto``) and ends where an uninterrupted run would (bit for bit with ``deterministic=true``). Nothing
    is written before every start-up check has passed.
    """
    accelerator = build_accelerator(cfg.mixed_precision, cfg.optim.grad_accum, task.broadcast_buffers)
    threads = thread_count(cfg.threads, processes_on_this_node(accelerator), cfg.num_workers)
    if cfg.deterministic:
        threads = 1  # several CPU threads add partial sums in varying order
    with torch_settings(threads, cfg.deterministic, accelerator.device), RunLock() as lock:
        return _fit(cfg, task, accelerator, lock)


def _fit(cfg: RunConfig, task: Task, accelerator: Accelerator, lock: RunLock) -> RunSummary:
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.ERROR, format="%(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved object is noise here
    logging.getLogger("timm").setLevel(logging.WARNING)  # three lines per encoder loaded from a folder, likewise
    set_seed(cfg.seed)  # identical initial weights, and identical random decisions, on every process
    check_shared_run_directory(accelerator, cfg.output_dir)  # first: every machine sees the run directory,
    check_run_directory(cfg.output_dir)  # so all agree whether it is foreign (refused before anything is written)
    check_fresh_start(cfg.output_dir, cfg.resume, cfg.replace)  # and a fresh start over an earlier run

    dataset = task.build_dataset(accelerator)
    o = cfg.optim
    loader = make_loader(dataset, o.batch_size, task.collate_fn(), cfg.num_workers, cfg.seed, accelerator.device)
    parts = task.build(accelerator, dataset)
    if cfg.memory_check:  # before anything is placed on the device: a config that cannot fit stops here
        _check_memory(task, parts, o.batch_size, accelerator)
    model, optimizer, loader = accelerator.prepare(parts.model, parts.optimizer, loader)
    for module in parts.on_device:
        module.to(accelerator.device)

    processes = accelerator.num_processes
    steps = steps_per_epoch(len(dataset), len(loader), o.batch_size, o.grad_accum, processes)
    resolved = task.resolved_config()
    candidates = resume_candidates(cfg.resume, cfg.output_dir / "checkpoints")
    if candidates:  # before loading: a changed model would not load anyway
        check_resumed_config(resolved, cfg.output_dir, task.fixed_on_resume)
    state = TrainState()
    resumed_from = resume(accelerator, candidates, cfg.resume == "auto", state, parts.checkpointed)
    layout = BatchLayout(processes, o.batch_size, o.grad_accum, steps)
    if resumed_from is not None:
        check_same_layout(state.layout, layout, resumed_from)
    state.layout = layout
    if accelerator.is_main_process:  # every check has passed: from here on the run directory is written
        kept = lock.claim(cfg.output_dir, cfg.replace)  # one run at a time: a second one is refused here
        if kept is not None:
            logger.info(f"replace=true: the earlier run's files moved into {kept}")
        unfinished = remove_unfinished(cfg.output_dir / "checkpoints")
        if unfinished:
            logger.info(f"removed {', '.join(unfinished)}: checkpoints whose saving never finished")
        save_config(resolved, cfg.output_dir)
        task.write_run_files(cfg.output_dir)
        if resumed_from is not None:
            logger.info(f"resumed from {resumed_from} at step {state.step}")
    left_out = left_out_per_epoch(len(dataset), steps, o.batch_size, o.grad_accum, processes)
    if left_out * 100 >= len(dataset):  # a visible share of a small dataset; each epoch leaves out others
        logger.info(f"each epoch trains on {len(dataset) - left_out} of {len(dataset)} images (whole batches)")
    run = RunContext(accelerator, state, steps, o.batch_size * o.grad_accum * processes, o.epochs * steps)
    task.model = model
    task.setup(run)

    clock = time.perf_counter()
    loop = _Loop(cfg, task, run, optimizer, loader, parts.checkpointed, getattr(dataset, "set_epoch", None))
    last = loop.train()
    exported: dict[str, Path] = {}
    if accelerator.is_main_process:
        exported = task.export(cfg.output_dir, state.step)
    if cfg.dump_rank_weights:
        write_weights_hash(accelerator.unwrap_model(task.synced_weights()), cfg.output_dir, accelerator.process_index)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    summary = RunSummary(state.step, time.perf_counter() - clock, last, exported, loop.validation, cfg.output_dir)
    if accelerator.is_main_process:
        print(summary.line(task.name), flush=True)  # always, on a terminal or not
    return summary


def _check_memory(task: Task, parts: TrainingParts, batch_size: int, accelerator: Accelerator) -> None:
    """The start-up memory estimate against the device's free memory (`lafs.engine.memory`), logged when it fits."""
    activations = task.activation_bytes(parts, batch_size)
    estimate = estimate_memory(parts.model, parts.optimizer, parts.on_device, activations)
    sharing = 1 if accelerator.device.type == "cuda" else processes_on_this_node(accelerator)  # one GPU each
    free = device_free_memory(accelerator.device)
    if accelerator.num_processes > 1:  # every process decides on the least free memory: all stop, or none
        free = int(accelerator.gather(torch.tensor([free], device=accelerator.device, dtype=torch.float64)).min())
    check_memory(estimate, sharing, free, task.memory_advice)
    logger.info(f"memory per process: about {estimate.describe()}; {free / 2**30:.1f} GiB available")


class _Loop:
    """Optimiser steps with their logging, validation and checkpoints."""

    def __init__(
        self,
        cfg: RunConfig,
        task: Task,
        run: RunContext,
        optimizer: torch.optim.Optimizer,
        loader: Any,
        checkpointed: list[nn.Module],
        on_epoch: Callable[[int], None] | None,
    ) -> None:
        self.cfg, self.task, self.run, self.optimizer, self.loader = cfg, task, run, optimizer, loader
        self.checkpointed, self.on_epoch = checkpointed, on_epoch  # on_epoch: the dataset's set_epoch, if any
        self.target = run.total_steps if cfg.max_steps is None else min(cfg.max_steps, run.total_steps)
        self.saved_step = run.state.step  # the step of the newest checkpoint
        self.validation: dict[str, float] = {}  # the last validation's record
        self.skipped = self.skipped_total = 0  # optimiser steps skipped for non-finite gradients: in a row, in all

    def train(self) -> dict[str, float]:
        """Steps from ``run.state.step`` to the target; returns the last logged record.

        A bad-input error mid-run (too many bad records, say) stops the run with a checkpoint of the steps done, so
        rerunning after the fix continues (one process: with several, the others are not there to save with it).
        """
        accelerator, state, is_main = self.run.accelerator, self.run.state, self.run.accelerator.is_main_process
        log = RunLog(self.cfg.output_dir, enabled=is_main, resumed_from=state.step)
        progress = Progress(is_main, self.target, state.step, self.task.name)
        try:
            return self._steps(log, progress)
        except LafsError as error:
            broken = isinstance(error, NonFiniteWeights)  # nothing of them may be written
            if accelerator.num_processes == 1 and state.step > self.saved_step and not broken:
                self._save()
                logger.warning(f"stopped at step {state.step}; saved a checkpoint of the steps done")
            raise
        finally:  # an interrupted run still flushes its log; its last checkpoint is already complete
            progress.close()
            log.close()

    def _steps(self, log: RunLog, progress: Progress) -> dict[str, float]:
        cfg, task, run = self.cfg, self.task, self.run
        accelerator, state = run.accelerator, run.state
        last: dict[str, float] = {}
        if state.step >= self.target:
            return last
        images_seen, clock = 0, time.perf_counter()
        batches = training_batches(
            accelerator, self.loader, state.step, run.steps_per_epoch, cfg.optim.grad_accum, self.on_epoch
        )
        for batch in batches:
            step = state.step
            terms = train_micro_batch(
                accelerator, task, self.optimizer, batch, step, cfg.optim.clip_grad, cfg.optim.clip_mode
            )
            images_seen += _batch_size(batch) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            self.skipped = self.skipped + 1 if NONFINITE in terms else 0
            if self.skipped:
                self.skipped_total += 1
                self._check_nonfinite(step, terms)
            state.step += 1
            record = None
            if state.step % cfg.log_every == 0 or state.step == self.target:
                record = _record(task, step, terms, images_seen / (time.perf_counter() - clock))
                log.write(state.step, record)
                last = record
                images_seen, clock = 0, time.perf_counter()
            progress.step(state.step, record)
            # The last step validates too, before its checkpoint, so the checkpoint holds the final best score.
            if task.validates and ((cfg.eval_every and state.step % cfg.eval_every == 0) or state.step == self.target):
                started = time.perf_counter()
                if accelerator.is_main_process:  # the others wait at the barrier
                    # Random draws during validation (a loader's seed) must not shift training's: a run stopped at a
                    # validated step and resumed would otherwise differ from one that ran through.
                    with torch.random.fork_rng(devices=_cuda_devices(accelerator)):
                        self.validation = task.validate(state.step)
                        log.write(state.step, self.validation)
                    plot_learning_curve(cfg.output_dir, f"{task.name}: {cfg.output_dir.name}")
                accelerator.wait_for_everyone()
                clock += time.perf_counter() - started  # images/s counts training, not validation
            if state.step % cfg.checkpoint_every == 0 or state.step == self.target:
                self._save()
            if state.step >= self.target:
                return last
        raise AssertionError("training_batches is endless")  # pragma: no cover

    def _check_nonfinite(self, step: int, terms: Mapping[str, torch.Tensor]) -> None:
        """A skipped step is logged; ``max_nonfinite_steps`` of them in a row stop the run with one line."""
        what = ", ".join(nonfinite_terms(terms)) or "the gradients"
        lr = self.task.learning_rate(step)
        if self.skipped <= self.cfg.max_nonfinite_steps:
            logger.warning(f"step {step}: {what} not finite; the step is skipped (weights unchanged)")
            return
        raise TrainingDiverged(
            f"step {step}: {what} not finite for {self.skipped} steps in a row ({self.skipped_total} skipped in all; "
            f"the weights are those of step {step - self.skipped + 1}): lower optim.lr ({lr:.3g} now) or set "
            "optim.clip_grad, or check the data"
        )

    def _save(self) -> None:
        cfg, state = self.cfg, self.run.state
        if not weights_finite([m for m in (self.task.model, *self.checkpointed) if m is not None]):
            raise NonFiniteWeights(
                f"step {state.step}: the weights are no longer finite, so no checkpoint or encoder is written (the "
                f"last checkpoint is from step {self.saved_step}): lower optim.lr or set optim.clip_grad"
            )
        folder = cfg.output_dir / "checkpoints"
        save_checkpoint(self.run.accelerator, folder, state, self.checkpointed, cfg.keep_checkpoints)
        self.saved_step = state.step


def train_micro_batch(
    accelerator: Accelerator,
    task: Task,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    step: int,
    clip_grad: float,
    clip_mode: ClipMode = "global",
) -> dict[str, torch.Tensor]:
    """One micro-batch of optimiser step ``step``: schedules, forward, backward and, on the last micro-batch of an
    accumulation cycle, clipping (``clip_grad`` > 0, as ``clip_mode`` says) and the optimiser step; returns the
    task's loss terms. (Benchmarks time this too.)"""
    model = task.model
    assert model is not None, "the engine sets task.model before training"
    _set_schedules(optimizer, task, step)
    with accelerator.accumulate(model):
        terms = task.training_step(batch, step)
        accelerator.backward(terms["loss"])
        if accelerator.sync_gradients:
            if clip_grad > 0 and clip_mode == "global":  # ours and arcface_torch's: one norm over all gradients
                accelerator.clip_grad_norm_(model.parameters(), clip_grad)  # unscales fp16 gradients first
            elif clip_grad > 0:  # DINO's and released LAFS pretraining's: every parameter capped on its own
                accelerator.unscale_gradients()  # fp16: the norms must be those of the true gradients
                for parameter in model.parameters():
                    if parameter.grad is not None:
                        torch.nn.utils.clip_grad_norm_(parameter, clip_grad)
            task.after_backward(step)
            if accelerator.scaler is None and not gradients_finite(model):  # fp16's scaler skips these itself
                optimizer.zero_grad(set_to_none=True)  # the step is skipped: the weights stay as they were
                terms = {**terms, NONFINITE: torch.ones((), device=terms["loss"].device)}
        if NONFINITE not in terms:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    task.after_micro_batch(step)
    if accelerator.sync_gradients:
        task.after_step(step, skipped=accelerator.optimizer_step_was_skipped or NONFINITE in terms)
    return terms


def gradients_finite(model: nn.Module) -> bool:
    """Whether every gradient of ``model`` is finite: one norm over all of them (DDP has already made them equal on
    every process, so every process decides alike). A norm that overflows counts as non-finite too."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


def weights_finite(modules: Sequence[nn.Module]) -> bool:
    """Whether every parameter of ``modules`` is finite (buffers may hold infinities by design: running minima)."""
    return all(bool(torch.isfinite(p).all()) for m in modules for p in m.parameters())


def nonfinite_terms(terms: Mapping[str, torch.Tensor]) -> list[str]:
    """The loss terms of a step that are NaN or infinite (none: the gradients alone went non-finite)."""
    return [name for name, value in terms.items() if name != NONFINITE and not bool(torch.isfinite(value).all())]


def _set_schedules(optimizer: torch.optim.Optimizer, task: Task, step: int) -> None:
    """The learning rate (times each group's ``lr_scale``) and the scheduled weight decay of optimiser step ``step``."""
    lr, decay = task.learning_rate(step), task.weight_decay(step)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if decay is not None and group.get("scheduled_decay", False):
            group["weight_decay"] = decay


def _record(task: Task, step: int, terms: Mapping[str, torch.Tensor], images_per_second: float) -> dict[str, float]:
    """One log record of optimiser step ``step`` (0-based): the terms, the task's values, epoch, schedules, speed."""
    values = {name: float(value.detach()) for name, value in terms.items()}
    record = {**values, **task.log_values(step, values), "epoch": task.epoch(step + 1), "lr": task.learning_rate(step)}
    decay = task.weight_decay(step)
    if decay is not None:
        record["weight_decay"] = decay
    return record | {"images_per_second": images_per_second}


def _cuda_devices(accelerator: Accelerator) -> list[torch.device]:
    return [accelerator.device] if accelerator.device.type == "cuda" else []


def _batch_size(batch: Mapping[str, object]) -> int:
    first = next(v for v in batch.values() if isinstance(v, torch.Tensor))
    return int(first.shape[0])
