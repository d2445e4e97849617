"""LAFS self-supervised pretraining: DINO self-distillation over landmark-token views.

    accelerate launch lafs/pretrain.py --config configs/pretrain/demo.yaml [key=value ...]
    python lafs/pretrain.py ...              (the same, one process)

The same file runs on a laptop CPU, one GPU, several GPUs or nodes. Top-level keys every run understands:
``output_dir`` (the run directory), ``max_steps`` (stop after N optimiser steps; schedules still span all epochs)
and ``resume`` (``auto``: the newest checkpoint in the run directory; a path; or empty for a fresh start).
The run directory ends up holding config.yaml, checkpoints/, log.jsonl, tensorboard/ and encoder/ (the teacher
backbone as a stand-alone encoder).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):
    # `accelerate launch lafs/pretrain.py` runs this file as a script, which puts lafs/ itself first on the path,
    # where lafs/data, lafs/config.py ... would shadow top-level modules: put the repository root there instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from timm.optim import param_groups_weight_decay
from torch.utils.data import DataLoader

from lafs.accelerator import build_accelerator, use_fused_adamw
from lafs.augment import LandmarkViews, PretrainViews, ViewConfig, collate_views, views_on_accelerator
from lafs.checkpoints import TrainState, find_resume_point, save_checkpoint
from lafs.cli import entry_point
from lafs.config import parse_cli, save_config
from lafs.data.collate import collate_faces, normalize_images
from lafs.data.open import DatasetConfig, open_dataset
from lafs.data.pairs import load_bin
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig
from lafs.device_views import DeviceViews
from lafs.dino import DINOHead, DINOLoss, collapse_warning, cosine_schedule, ema_update, teacher_temperature
from lafs.errors import ConfigError
from lafs.evaluation.verification import evaluate_pairs
from lafs.export import save_encoder
from lafs.models import EncoderConfig, build_encoder
from lafs.models.multiview import MultiViewEncoder
from lafs.run_log import RunLog
from lafs.training import progress_bar, training_batches, write_weights_hash

logger = logging.getLogger("lafs.pretrain")
SYNTHETIC = "synthetic"


@dataclass
class DinoConfig:
    out_dim: int = 65536  # prototypes; LAFS uses 100000 at ViT-B scale, DINO's default is 65536
    hidden_dim: int = 2048  # DINO head MLP width
    bottleneck_dim: int = 256  # DINO head bottleneck before the weight-normalised prototypes
    norm_last_layer: bool = True  # fixed-norm prototypes: DINO's stabilising default
    student_temp: float = 0.1  # DINO and LAFS
    teacher_temp: float = 0.04  # final teacher temperature (LAFS)
    warmup_teacher_temp: float = 0.07  # LAFS starts the teacher hotter and cools it (reverse of DINO)
    warmup_teacher_temp_epochs: int = 30  # LAFS
    momentum_teacher: float = 0.996  # EMA momentum, cosine to 1 over training (DINO, LAFS)
    center_momentum: float = 0.9  # DINO centring
    freeze_last_layer_epochs: int = 1  # prototypes stay fixed at first: LAFS/DINO default


@dataclass
class OptimConfig:
    epochs: int = 41  # LAFS pretraining length
    batch_size: int = 82  # per process: LAFS on an A100-40GB
    lr: float = 5e-4  # at a total batch of 256; scaled linearly with the real total batch (DINO rule)
    min_lr: float = 1e-6  # end of the cosine decay (LAFS)
    warmup_epochs: int = 10  # linear LR warm-up (LAFS)
    weight_decay: float = 0.04  # start of the cosine weight-decay schedule (DINO, LAFS)
    weight_decay_end: float = 0.4  # end of it
    clip_grad: float = 3.0  # max gradient norm (LAFS); 0 turns clipping off
    grad_accum: int = 1  # micro-batches per optimiser step


@dataclass
class PretrainConfig:
    output_dir: Path = Path("runs/pretrain")  # the run directory: config, checkpoints, logs, encoder
    max_steps: int | None = None  # stop after this many optimiser steps; the schedules still span all epochs
    resume: str = "auto"  # "auto" (newest checkpoint in output_dir, if any), a checkpoint path, or "" (fresh)
    seed: int = 0  # weights, sampling order and views all derive from it
    data: DatasetConfig = field(default_factory=lambda: DatasetConfig(path=SYNTHETIC))  # path "synthetic": built-in
    synthetic: SyntheticFacesConfig = field(default_factory=SyntheticFacesConfig)  # used when data.path=synthetic
    # LAFS: ViT-B over 196 landmark tokens with stochastic depth 0.1.
    encoder: EncoderConfig = field(
        default_factory=lambda: EncoderConfig(name="lafs_vit_base_p8_112", drop_path_rate=0.1)
    )
    views: ViewConfig = field(default_factory=ViewConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # bf16 on GPUs that have it; "no" on CPU
    num_workers: int = 2  # data-loading processes per training process
    checkpoint_every: int = 500  # optimiser steps between checkpoints (and one at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept; older ones are deleted
    log_every: int = 10  # optimiser steps between log lines
    eval_bin: str = ""  # a .bin pair set to verify the teacher on during training ("" = never)
    eval_every: int = 0  # optimiser steps between those verifications (0 = only at the end, if eval_bin is set)
    dump_rank_weights: bool = False  # each process writes a hash of its weights at the end (to check DDP sync)

    def validate(self) -> None:
        if self.encoder.landmark_set != self.data.landmark_set:
            raise ConfigError(
                f"encoder.landmark_set '{self.encoder.landmark_set}' must equal data.landmark_set "
                f"'{self.data.landmark_set}': the encoder embeds the landmarks the data carries"
            )
        if self.data.landmarks == "none":
            raise ConfigError("data.landmarks=none: pretraining needs landmarks (template or a cache)")
        counts = {f"optim.{k}": getattr(self.optim, k) for k in ("epochs", "batch_size", "grad_accum")}
        counts |= {k: getattr(self, k) for k in ("checkpoint_every", "keep_checkpoints", "log_every")}
        for key, value in counts.items():
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        if self.seed < 0:
            raise ConfigError(f"seed must be non-negative, got {self.seed}")
        if not 0 <= self.optim.warmup_epochs <= self.optim.epochs:
            raise ConfigError(f"optim.warmup_epochs must lie in [0, optim.epochs], got {self.optim.warmup_epochs}")


def build_dataset(cfg: PretrainConfig, record_subset: bool, views_on_device: bool) -> Any:
    """What the loader reads; ``record_subset``: this process writes a few-shot selection into the run directory.

    With ``views_on_device`` the faces themselves (views are made per batch on the device), else `PretrainViews`.
    """
    if cfg.data.path == SYNTHETIC:
        base = SyntheticFaces(dataclasses.replace(cfg.synthetic, landmark_set=cfg.data.landmark_set))
    else:
        options = dataclasses.asdict(cfg.data)
        base = open_dataset(options.pop("path"), run_dir=cfg.output_dir if record_subset else None, **options)
    if views_on_device:
        return base
    return PretrainViews(base, LandmarkViews(cfg.views, cfg.data.landmark_set), seed=cfg.seed)


def view_seed(seed: int, process: int, step: int, micro_batch: int) -> int:
    """Seed of the device views of one micro-batch: resumed runs replay it, and processes draw different views."""
    return int(np.random.SeedSequence([seed, process, step, micro_batch]).generate_state(1, np.uint64)[0] >> 1)


def build_models(cfg: PretrainConfig) -> tuple[MultiViewEncoder, MultiViewEncoder]:
    """Student and teacher with the same initial weights; the teacher has no stochastic depth and no gradients."""
    d = cfg.dino

    def model(encoder: EncoderConfig) -> MultiViewEncoder:
        backbone = build_encoder(encoder)
        head = DINOHead(
            backbone.num_features, d.out_dim, d.hidden_dim, d.bottleneck_dim, norm_last_layer=d.norm_last_layer
        )
        return MultiViewEncoder(backbone, head)

    student = model(cfg.encoder)
    teacher = model(dataclasses.replace(cfg.encoder, drop_path_rate=0.0))
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    return student, teacher


def optimizer_groups(student: MultiViewEncoder, weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups: biases, norms and the backbone's no-decay names (tokenizer, positions) get no decay.

    Only the decayed group follows the weight-decay schedule (``scheduled_decay``).
    """
    no_decay = {f"backbone.{name}" for name in student.backbone.no_weight_decay()}
    # A positive placeholder makes timm split the groups even when the schedule starts at 0.
    groups = param_groups_weight_decay(student, 1.0, no_weight_decay_list=no_decay)
    for group in groups:
        group["scheduled_decay"] = group["weight_decay"] > 0
        group["weight_decay"] = weight_decay if group["scheduled_decay"] else 0.0
    return groups


class Schedules:
    """LR, weight decay, teacher temperature and momentum as pure functions of the optimiser step."""

    def __init__(self, cfg: PretrainConfig, steps_per_epoch: int, total_batch: int) -> None:
        self.total = cfg.optim.epochs * steps_per_epoch
        self.base_lr = cfg.optim.lr * total_batch / 256
        self.cfg, self.steps_per_epoch = cfg, steps_per_epoch

    def lr(self, step: int) -> float:
        o = self.cfg.optim
        return cosine_schedule(step, self.total, self.base_lr, o.min_lr, o.warmup_epochs * self.steps_per_epoch)

    def weight_decay(self, step: int) -> float:
        return cosine_schedule(step, self.total, self.cfg.optim.weight_decay, self.cfg.optim.weight_decay_end)

    def teacher_temp(self, step: int) -> float:
        d = self.cfg.dino
        return teacher_temperature(
            step, d.warmup_teacher_temp_epochs * self.steps_per_epoch, d.warmup_teacher_temp, d.teacher_temp
        )

    def momentum(self, step: int) -> float:
        return cosine_schedule(step, self.total, self.cfg.dino.momentum_teacher, 1.0)

    def last_layer_frozen(self, step: int) -> bool:
        return step < self.cfg.dino.freeze_last_layer_epochs * self.steps_per_epoch


def _pixels(images: torch.Tensor) -> torch.Tensor:
    # Loader-made views arrive as uint8; device-made views are already normalised floats.
    return normalize_images(images) if images.dtype == torch.uint8 else images


def forward_views(
    student: torch.nn.Module, teacher: torch.nn.Module, batch: dict[str, torch.Tensor], accelerator: Accelerator
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(student outputs for all views, teacher outputs for the globals, number of views), view-major."""
    views = {
        "global_images": _pixels(batch["global_images"]),
        "global_landmarks": batch["global_landmarks"],
    }
    locals_ = {
        "local_images": _pixels(batch["local_images"]),
        "local_landmarks": batch["local_landmarks"],
        "local_ids": batch["local_ids"],
    }
    student_out = student(**views, **locals_)
    with torch.no_grad(), accelerator.autocast():
        teacher_out = teacher(**views)
    return student_out.float(), teacher_out.float(), batch["global_images"].shape[1] + batch["local_images"].shape[1]


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_cli(argv, PretrainConfig, description=__doc__.split("\n\n")[0])
    accelerator = build_accelerator(cfg.mixed_precision, cfg.optim.grad_accum)
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.ERROR, format="%(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved object is noise here
    run_dir = cfg.output_dir
    if accelerator.is_main_process:
        save_config(cfg, run_dir)
    set_seed(cfg.seed)  # identical initial weights on every process

    on_device = views_on_accelerator(cfg.views, accelerator.device)
    dataset = build_dataset(cfg, record_subset=accelerator.is_main_process, views_on_device=on_device)
    loader = DataLoader(
        dataset,
        batch_size=cfg.optim.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=cfg.num_workers,
        collate_fn=collate_faces if on_device else collate_views,
        pin_memory=accelerator.device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    if len(loader) < cfg.optim.grad_accum:
        raise ConfigError(f"{len(dataset)} images give fewer batches of {cfg.optim.batch_size} than optim.grad_accum")
    student, teacher = build_models(cfg)
    optimizer = torch.optim.AdamW(
        optimizer_groups(student, cfg.optim.weight_decay), lr=cfg.optim.lr, fused=use_fused_adamw(accelerator)
    )
    dino_loss = DINOLoss(cfg.dino.out_dim, cfg.dino.student_temp, cfg.dino.center_momentum)
    student, optimizer, loader = accelerator.prepare(student, optimizer, loader)
    teacher.to(accelerator.device)
    dino_loss.to(accelerator.device)
    state = TrainState()
    accelerator.register_for_checkpointing(teacher, dino_loss, state)

    checkpoint_dir = run_dir / "checkpoints"
    resume_from = find_resume_point(cfg.resume, checkpoint_dir)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        logger.info(f"resumed from {resume_from} at step {state.step}")

    steps_per_epoch = len(loader) // cfg.optim.grad_accum
    total_batch = cfg.optim.batch_size * cfg.optim.grad_accum * accelerator.num_processes
    schedules = Schedules(cfg, steps_per_epoch, total_batch)
    target = schedules.total if cfg.max_steps is None else min(cfg.max_steps, schedules.total)
    log = RunLog(run_dir, enabled=accelerator.is_main_process, resumed_from=state.step)
    eval_set = load_bin(cfg.eval_bin, cfg.data.image_size) if cfg.eval_bin and accelerator.is_main_process else None
    bar = progress_bar(accelerator, target, state.step)
    device_views = DeviceViews(cfg.views, cfg.data.landmark_set) if on_device else None
    run = Run(
        cfg,
        accelerator,
        dataset,
        loader,
        device_views,
        student,
        teacher,
        optimizer,
        dino_loss,
        schedules,
        state,
        log,
        bar,
    )
    try:
        train(run, target, eval_set)
        if eval_set is not None and (not cfg.eval_every or state.step % cfg.eval_every):  # unless just evaluated
            log.write(state.step, verify(teacher, eval_set, accelerator))
    finally:  # an interrupted run still flushes its log; its last checkpoint is already complete
        bar.close()
        log.close()

    if accelerator.is_main_process:
        source = {"stage": "lafs-pretrain", "run_dir": str(run_dir), "step": state.step, "weights": "teacher"}
        save_encoder(teacher.backbone, run_dir / "encoder", source)
    if cfg.dump_rank_weights:
        write_weights_hash(accelerator.unwrap_model(student), run_dir, accelerator.process_index)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


@dataclass
class Run:
    """Everything the training loop touches."""

    cfg: PretrainConfig
    accelerator: Accelerator
    dataset: Any
    loader: Any
    device_views: DeviceViews | None  # makes each batch's views on the device; None when the loader made them
    student: Any
    teacher: MultiViewEncoder
    optimizer: Any
    dino_loss: DINOLoss
    schedules: Schedules
    state: TrainState
    log: RunLog
    bar: Any


def train(run: Run, target: int, eval_set: tuple[Any, Any] | None) -> None:
    """Optimiser steps from ``run.state.step`` to ``target``, with logging and checkpoints."""
    cfg, accelerator, state, schedules = run.cfg, run.accelerator, run.state, run.schedules
    student, teacher, optimizer = run.student, run.teacher, run.optimizer
    steps_per_epoch = schedules.steps_per_epoch
    images_seen, clock = 0, time.perf_counter()
    if state.step >= target:
        return
    set_epoch = getattr(run.dataset, "set_epoch", None)
    batches = training_batches(accelerator, run.loader, state.step, steps_per_epoch, cfg.optim.grad_accum, set_epoch)
    micro_batch = 0  # within the accumulation cycle: with the step, it seeds the device views
    for _, batch in batches:
        step = state.step
        if run.device_views is not None:
            seed = view_seed(cfg.seed, accelerator.process_index, step, micro_batch)
            batch = run.device_views(batch, torch.Generator(accelerator.device).manual_seed(seed))
        micro_batch += 1
        for group in optimizer.param_groups:
            group["lr"] = schedules.lr(step)
            if group["scheduled_decay"]:
                group["weight_decay"] = schedules.weight_decay(step)
        with accelerator.accumulate(student):
            student_out, teacher_out, num_views = forward_views(student, teacher, batch, accelerator)
            losses = run.dino_loss(student_out, teacher_out, schedules.teacher_temp(step), num_views)
            accelerator.backward(losses["loss"])
            if accelerator.sync_gradients:
                if cfg.optim.clip_grad > 0:
                    accelerator.clip_grad_norm_(student.parameters(), cfg.optim.clip_grad)
                if schedules.last_layer_frozen(step):
                    accelerator.unwrap_model(student).head.cancel_last_layer_gradients()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        images_seen += batch["global_images"].shape[0] * accelerator.num_processes
        if not accelerator.sync_gradients:
            continue
        micro_batch = 0
        if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the student did not move either
            ema_update(teacher, accelerator.unwrap_model(student), schedules.momentum(step))
        state.step += 1
        run.bar.update(1)
        if state.step % cfg.log_every == 0 or state.step == target:
            record = log_step(state.step, losses, schedules, images_seen / (time.perf_counter() - clock))
            run.bar.set_postfix(
                loss=f"{record['loss']:.4f}",
                lr=f"{record['lr']:.2e}",
                t_temp=f"{record['teacher_temp']:.3f}",
                img_s=f"{record['images_per_second']:.0f}",
            )
            run.log.write(state.step, record)
            images_seen, clock = 0, time.perf_counter()
        if cfg.eval_bin and cfg.eval_every and state.step % cfg.eval_every == 0:
            if eval_set is not None:  # the main process evaluates; the others wait at the barrier below
                run.log.write(state.step, verify(teacher, eval_set, accelerator))
            accelerator.wait_for_everyone()
        if state.step % cfg.checkpoint_every == 0 or state.step == target:
            save_checkpoint(accelerator, cfg.output_dir / "checkpoints", state.step, cfg.keep_checkpoints)
        if state.step >= target:
            return


def log_step(
    step: int, losses: dict[str, torch.Tensor], schedules: Schedules, images_per_second: float
) -> dict[str, float]:
    """One log record; warns when the teacher's outputs show collapse."""
    signals = {k: float(v.detach()) for k, v in losses.items()}
    warning = collapse_warning(signals)
    if warning:
        logger.warning(f"step {step}: {warning}")
    return {
        **signals,
        "epoch": step / schedules.steps_per_epoch,
        "lr": schedules.lr(step - 1),
        "weight_decay": schedules.weight_decay(step - 1),
        "teacher_temp": schedules.teacher_temp(step - 1),
        "momentum": schedules.momentum(step - 1),
        "images_per_second": images_per_second,
    }


def verify(teacher: MultiViewEncoder, eval_set: tuple[Any, Any], accelerator: Accelerator) -> dict[str, float]:
    """k-fold verification accuracy of the teacher backbone on the configured .bin set."""
    images, issame = eval_set
    folds = min(10, len(issame))  # the standard 10 folds; small home-made sets get one pair per fold
    report = evaluate_pairs(teacher.backbone, images, issame, device=accelerator.device, folds=folds)
    return {"verify_accuracy": report["accuracy"], "verify_accuracy_std": report["accuracy_std"]}


if __name__ == "__main__":
    sys.exit(main())
