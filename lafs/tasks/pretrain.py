"""LAFS pretraining as a task: DINO self-distillation of a landmark-token ViT over landmark-aware views.

The student sees 2 global views (all K landmarks) and N local views (k landmark ids each); the teacher, an EMA of the
student without gradients, sees the globals. Both carry a DINO head; the DINO loss centres and sharpens the
teacher's outputs (arXiv 2403.08161, ``docs/losses.md``). The engine (`lafs.engine.fit`) runs the loop.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator
from timm.optim import param_groups_weight_decay

from lafs.data.collate import collate_faces, normalize_images
from lafs.dino import DINOHead, DINOLoss, StallWatch, collapse_warning, ema_update
from lafs.engine import OptimConfig, RunConfig, RunContext, Task, TrainingParts, register_stage
from lafs.engine.accelerator import use_fused_adamw
from lafs.engine.config import ClipMode
from lafs.engine.memory import value_bytes, vit_activation_elements
from lafs.errors import ConfigError
from lafs.evaluation.during_training import ValidationSets, check_eval_bins, keep_best
from lafs.export import save_encoder
from lafs.landmarks.provenance import PREDICTOR, LandmarkChoice, data_landmark_source
from lafs.models import EncoderConfig, build_encoder
from lafs.models.image_encoder import ImageEncoder
from lafs.models.landmark_predictor import LandmarkPredictor, load_landmark_predictor
from lafs.models.multiview import MultiViewEncoder
from lafs.models.vit import LandmarkViT
from lafs.schedules import (
    LAFS_PRETRAIN_EPOCHS,
    cosine_schedule,
    teacher_temperature,
    teacher_temperature_per_epoch,
    warmup_cosine,
)
from lafs.views import (
    NUM_GLOBAL,
    DeviceViews,
    LandmarkViews,
    PretrainViews,
    ViewConfig,
    check_view_set,
    collate_views,
    views_on_accelerator,
)
from lafs.views.predicted import views_with_predicted_landmarks

logger = logging.getLogger("lafs.pretrain")


# Ten times LAFS's 100,000 prototypes: wider heads are typos (dino.out_dim=1e11 asked for 25 TB).
MAX_HEAD_WIDTH = 2**20


@dataclass
class DinoConfig:
    out_dim: int = 65536  # prototypes; LAFS uses 100000 at ViT-B scale, DINO's default is 65536
    hidden_dim: int = 2048  # DINO head MLP width
    bottleneck_dim: int = 256  # DINO head bottleneck before the weight-normalised prototypes
    norm_last_layer: bool = True  # fixed-norm prototypes: DINO's stabilising default
    student_temp: float = 0.1  # DINO and LAFS
    teacher_temp: float = 0.04  # final teacher temperature (LAFS)
    warmup_teacher_temp: float = 0.07  # LAFS starts the teacher hotter and cools it (reverse of DINO)
    warmup_teacher_temp_epochs: float = 30.0  # LAFS (of its 41 epochs: optim.schedules=relative stretches it)
    # How the teacher temperature moves during its warm-up. per_step (ours): a linear ramp, step by step. per_epoch:
    # the released np.linspace(warmup_teacher_temp, teacher_temp, warmup epochs)[epoch], reaching the end one epoch
    # earlier (the warm-up's length rounded to whole epochs).
    teacher_temp_schedule: Literal["per_step", "per_epoch"] = "per_step"
    momentum_teacher: float = 0.996  # EMA momentum, cosine to 1 over training (DINO, LAFS)
    center_momentum: float = 0.9  # DINO centring
    freeze_last_layer_epochs: float = 1.0  # prototypes stay fixed at first: LAFS/DINO default (stretched as above)

    def validate(self) -> None:
        for key in ("out_dim", "hidden_dim", "bottleneck_dim"):  # bounded before the head allocates them
            if not 1 <= getattr(self, key) <= MAX_HEAD_WIDTH:
                raise ConfigError(f"dino.{key} must lie in [1, {MAX_HEAD_WIDTH}], got {getattr(self, key)}")
        for key in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"dino.{key} must be a finite number > 0, got {value}")
        for key in ("warmup_teacher_temp_epochs", "freeze_last_layer_epochs"):
            if getattr(self, key) < 0:
                raise ConfigError(f"dino.{key} must be >= 0, got {getattr(self, key)}")
        for key in ("momentum_teacher", "center_momentum"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"dino.{key} must lie in [0, 1], got {getattr(self, key)}")


@dataclass
class PretrainOptimConfig(OptimConfig):
    epochs: int = LAFS_PRETRAIN_EPOCHS  # LAFS pretraining length: what the epoch-valued keys are written for
    batch_size: int = 82  # per process: LAFS on an A100-40GB
    clip_grad: float = 3.0  # max gradient norm (LAFS); 0 turns clipping off
    # As the released LAFS (and DINO) pretraining clips: each parameter's gradient on its own (utils.clip_gradients).
    clip_mode: ClipMode = "per_parameter"
    # Ours: no weight decay on the position table, CLS token and patch projection (timm's ViT convention). True: as
    # released (DINO's groups exempt only biases and norms).
    decay_embeddings: bool = False
    lr: float = 5e-4  # at a total batch of 256; scaled linearly with the real total batch (DINO rule)
    min_lr: float = 1e-6  # end of the cosine decay (LAFS)
    warmup_epochs: float = 10.0  # linear LR warm-up (LAFS; optim.schedules=relative stretches it from 41 epochs)
    weight_decay: float = 0.04  # start of the cosine weight-decay schedule (DINO, LAFS)
    weight_decay_end: float = 0.4  # end of it

    def validate(self) -> None:
        super().validate()
        decays = {"weight_decay": self.weight_decay, "weight_decay_end": self.weight_decay_end}
        self.check_recipe(self.warmup_epochs, self.lr, self.min_lr, decays, recipe_epochs=LAFS_PRETRAIN_EPOCHS)


@dataclass
class PretrainConfig(RunConfig):
    output_dir: Path = Path("runs/pretrain")  # the run directory: config, checkpoints, logs, encoder
    optim: PretrainOptimConfig = field(default_factory=PretrainOptimConfig)
    # LAFS: ViT-B over 196 landmark tokens with stochastic depth 0.1.
    encoder: EncoderConfig = field(
        default_factory=lambda: EncoderConfig(name="lafs_vit_base_p8_112", drop_path_rate=0.1)
    )
    views: ViewConfig = field(default_factory=ViewConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    # .bin pair sets the teacher is verified on every eval_every steps (and at the end), with the training data's
    # landmarks: does self-supervision learn identity? The best mean accuracy keeps its encoder in best/.
    eval_bins: list[str] = field(default_factory=list)
    eval_batch_size: int = 256  # images per forward during validation
    # A landmark-predictor folder (the released LAFS network from tools/import_checkpoint.py, as the paper did) that
    # places every view's tokens, frozen; "" = the data's landmarks moved with each view.
    landmark_predictor: str = ""

    def validate(self) -> None:
        super().validate()
        self.encoder.require_landmark_set(self.data.landmark_set)
        check_eval_bins(self.eval_bins)  # on every process: none waits for a failed one
        if self.eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.landmark_predictor and not Path(self.landmark_predictor, "config.json").is_file():
            raise ConfigError(f"landmark_predictor {self.landmark_predictor}: not a folder with a config.json")
        landmark_views = self.views.kind == "landmarks" and self.views.local_side == self.views.image_size
        if self.landmark_predictor and not landmark_views:
            raise ConfigError(
                "landmark_predictor places landmark views: it needs views.kind=landmarks and local views at "
                f"views.image_size (got kind {self.views.kind}, local side {self.views.local_side})"
            )
        check_view_set(self.views, self.encoder.landmark_set, "encoder.landmark_set")
        if self.views.kind == "patches":
            # Patches views put their tokens on each view's grid: a landmark cache would be read for nothing.
            if self.data.landmarks != "template":
                raise ConfigError(
                    f"data.landmarks must be template with views.kind=patches (its tokens sit on each view's patch "
                    f"grid, whatever the face's landmarks), got {self.data.landmarks}"
                )
            if self.encoder.landmark_fit != "none":  # rescaling the grid's 4..108 span would move tokens off patches
                raise ConfigError(
                    f"encoder.landmark_fit must be none with views.kind=patches (the grid already tiles the view), "
                    f"got {self.encoder.landmark_fit}"
                )
        elif self.data.landmarks == "none":
            raise ConfigError("data.landmarks=none: pretraining needs landmarks (template or a cache)")


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


def optimizer_groups(
    student: MultiViewEncoder, weight_decay: float, decay_embeddings: bool = False
) -> list[dict[str, Any]]:
    """Parameter groups: biases, norms and (unless ``decay_embeddings``) the backbone's no-decay names (tokenizer
    projection, position table, CLS token) get no decay.

    Only the decayed group follows the weight-decay schedule (``scheduled_decay``).
    """
    exempt = set() if decay_embeddings else student.backbone.no_weight_decay()
    no_decay = {f"backbone.{name}" for name in exempt}
    # A positive placeholder makes timm split the groups even when the schedule starts at 0.
    groups = param_groups_weight_decay(student, 1.0, no_weight_decay_list=no_decay)
    for group in groups:
        group["scheduled_decay"] = group["weight_decay"] > 0
        group["weight_decay"] = weight_decay if group["scheduled_decay"] else 0.0
    return groups


def view_seed(seed: int, process: int, step: int, micro_batch: int) -> int:
    """Seed of the device views of one micro-batch: resumed runs replay it, and processes draw different views."""
    return int(np.random.SeedSequence([seed, process, step, micro_batch]).generate_state(1, np.uint64)[0] >> 1)


def _pixels(images: torch.Tensor) -> torch.Tensor:
    # Loader-made views arrive as uint8; device-made views are already normalised floats.
    return normalize_images(images) if images.dtype == torch.uint8 else images


class PretrainTask(Task):
    """Student, EMA teacher, DINO heads and loss with its centre, last-layer freeze; views made per batch."""

    name = "pretrain"
    fixed_on_resume = ("data", "synthetic", "encoder", "dino", "landmark_predictor")

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__(cfg)
        self.cfg: PretrainConfig = cfg
        self.device_views: DeviceViews | None = None  # makes the views on the device; None: the loader makes them
        self.micro_batch = 0  # within the accumulation cycle: with the step, it seeds the device views
        self.eval_sets: ValidationSets | None = None

    def build_dataset(self, accelerator: Accelerator) -> Any:
        cfg = self.cfg
        base = self.open_faces(accelerator)  # first: the landmark set may follow the data's cache
        if views_on_accelerator(cfg.views, accelerator.device):
            self.device_views = DeviceViews(cfg.views, cfg.data.landmark_set)
        if self.device_views is not None:
            return base
        return PretrainViews(base, LandmarkViews(cfg.views, cfg.data.landmark_set), seed=cfg.seed)

    def collate_fn(self) -> Callable[[Sequence[Any]], dict[str, Any]]:
        return collate_faces if self.device_views is not None else collate_views

    def build(self, accelerator: Accelerator, dataset: Any) -> TrainingParts:
        cfg = self.cfg
        student, self.teacher = build_models(cfg)
        groups = optimizer_groups(student, cfg.optim.weight_decay, cfg.optim.decay_embeddings)
        optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, fused=use_fused_adamw(accelerator))
        self.dino_loss = DINOLoss(cfg.dino.out_dim, cfg.dino.student_temp, cfg.dino.center_momentum)
        on_device: list[torch.nn.Module] = [self.teacher, self.dino_loss]
        self.landmark_predictor: LandmarkPredictor | None = None
        if cfg.landmark_predictor:
            self.landmark_predictor = load_landmark_predictor(cfg.landmark_predictor).requires_grad_(False)
            predicts = (self.landmark_predictor.num_landmarks, self.landmark_predictor.cfg.image_size)
            if predicts != (student.backbone.num_landmarks, cfg.views.image_size):
                raise ConfigError(
                    f"landmark_predictor predicts {predicts[0]} landmarks on {predicts[1]} px images; the views are "
                    f"{cfg.views.image_size} px and the encoder takes {student.backbone.num_landmarks}"
                )
            if self.device_views is None:
                logger.info(
                    "landmark_predictor sees the loader's views after photometry; views.make_on=accelerator shows "
                    "them before, as LAFS does"
                )
            on_device.append(self.landmark_predictor)
        return TrainingParts(student, optimizer, on_device, [self.teacher, self.dino_loss])

    memory_advice = (
        "On a CPU use configs/cpu/pretrain.yaml (nano ViT, 49 landmarks, batch 32), or lower optim.batch_size, "
        "views.num_local or dino.out_dim."
    )

    def activation_bytes(self, parts: TrainingParts, batch_size: int) -> int | None:
        """The student's blocks over every view of a sample (`lafs.engine.memory`), plus its DINO head's MLP and
        prototype scores per view, times the batch."""
        cfg, backbone = self.cfg, getattr(parts.model, "backbone", None)
        if not isinstance(backbone, LandmarkViT):
            return None
        if cfg.views.kind == "patches":
            local_tokens = (cfg.views.local_side // int(backbone.patch_embed.patch_size[0])) ** 2
        else:
            local_tokens = cfg.views.local_landmarks
        tokens = [1 + backbone.num_landmarks] * NUM_GLOBAL + [1 + local_tokens] * cfg.views.num_local
        d = cfg.dino
        head = len(tokens) * (4 * d.hidden_dim + 3 * d.bottleneck_dim + 3 * d.out_dim)
        values = vit_activation_elements(backbone, tokens) + head
        return batch_size * values * value_bytes(cfg.mixed_precision)

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        self.schedule_steps = self.resolve_schedules()
        o = self.cfg.optim
        self.lr_schedule = warmup_cosine(
            o.lr, o.min_lr, o.warmup_epochs, run.steps_per_epoch, run.total_steps, o.stretch(LAFS_PRETRAIN_EPOCHS),
            scaling="linear", total_batch=run.total_batch, reference_batch=256,  # DINO's linear scaling rule
        )  # fmt: skip
        self.stall_watch = StallWatch()
        if self.cfg.eval_bins and run.accelerator.is_main_process:
            workers = max(1, self.cfg.num_workers)
            self.eval_sets = ValidationSets(self.cfg.eval_bins, self.landmark_choice(), workers, self.cfg.output_dir)

    # ---------------------------------------------------------------------------------------- schedules --

    def resolve_schedules(self) -> dict[str, int]:
        """Optimiser steps of each epoch-valued key, stretched from LAFS's 41 epochs under optim.schedules=relative
        (logged once, so the values a run used are on record)."""
        o, d = self.cfg.optim, self.cfg.dino
        stretch, spe = o.stretch(LAFS_PRETRAIN_EPOCHS), self.run.steps_per_epoch
        written = {
            "optim.warmup_epochs": o.warmup_epochs,
            "dino.warmup_teacher_temp_epochs": d.warmup_teacher_temp_epochs,
            "dino.freeze_last_layer_epochs": d.freeze_last_layer_epochs,
        }
        if o.schedules == "relative":
            resolved = ", ".join(f"{key} {value:g} -> {value * stretch:.4g}" for key, value in written.items())
            logger.info(f"optim.schedules=relative, LAFS's {LAFS_PRETRAIN_EPOCHS} epochs -> {o.epochs}: {resolved}")
        return {key: round(value * stretch * spe) for key, value in written.items()}

    def learning_rate(self, step: int) -> float:
        return self.lr_schedule(step)

    def weight_decay(self, step: int) -> float:
        o = self.cfg.optim
        return cosine_schedule(step, self.run.total_steps, o.weight_decay, o.weight_decay_end)

    def teacher_temp(self, step: int) -> float:
        d = self.cfg.dino
        warmup = self.schedule_steps["dino.warmup_teacher_temp_epochs"]
        if d.teacher_temp_schedule == "per_epoch":
            epochs, spe = round(warmup / self.run.steps_per_epoch), self.run.steps_per_epoch
            return teacher_temperature_per_epoch(step // spe, epochs, d.warmup_teacher_temp, d.teacher_temp)
        return teacher_temperature(step, warmup, d.warmup_teacher_temp, d.teacher_temp)

    def momentum(self, step: int) -> float:
        return cosine_schedule(step, self.run.total_steps, self.cfg.dino.momentum_teacher, 1.0)

    # ----------------------------------------------------------------------------------------- training --

    def training_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        """DINO loss of the student's views against the teacher's globals (outputs view-major)."""
        accelerator = self.run.accelerator
        if self.device_views is not None or self.landmark_predictor is not None:
            seed = view_seed(self.cfg.seed, accelerator.process_index, step, self.micro_batch)
            generator = torch.Generator(accelerator.device).manual_seed(seed)
            if self.landmark_predictor is not None:  # the frozen network places every view's tokens (LAFS)
                batch = views_with_predicted_landmarks(
                    self.landmark_predictor, batch, generator, self.cfg.views, self.device_views
                )
            elif self.device_views is not None:
                batch = self.device_views(batch, generator)
        self.micro_batch += 1
        globals_ = {
            "global_images": _pixels(batch["global_images"]),
            "global_landmarks": batch["global_landmarks"],
            "global_valid": batch["global_valid"],
        }
        locals_ = {
            "local_images": _pixels(batch["local_images"]),
            "local_landmarks": batch["local_landmarks"],
            "local_ids": batch["local_ids"],
            "local_valid": batch["local_valid"],
        }
        assert self.model is not None
        student_out = self.model(**globals_, **locals_)
        with torch.no_grad(), accelerator.autocast():
            teacher_out = self.teacher(**globals_)
        num_views = batch["global_images"].shape[1] + batch["local_images"].shape[1]
        return self.dino_loss(student_out.float(), teacher_out.float(), self.teacher_temp(step), num_views)

    def after_backward(self, step: int) -> None:
        if step < self.schedule_steps["dino.freeze_last_layer_epochs"]:  # prototypes still frozen
            self.run.accelerator.unwrap_model(self.model).head.cancel_last_layer_gradients()

    def after_step(self, step: int, skipped: bool) -> None:
        self.micro_batch = 0
        if not skipped:  # an fp16 overflow skipped the step: the student did not move, nor does the teacher
            ema_update(self.teacher, self.run.accelerator.unwrap_model(self.model), self.momentum(step))

    def log_values(self, step: int, terms: Mapping[str, float]) -> dict[str, float]:
        warning = collapse_warning(dict(terms))
        if warning:
            logger.warning(f"step {step + 1}: {warning}")
        # The loop's last step: it is always logged, so the warning is repeated there, next to the run's summary.
        last = self.run.total_steps if self.cfg.max_steps is None else min(self.cfg.max_steps, self.run.total_steps)
        stalled = self.stall_watch.observe(terms, (step + 1) / last, step + 1)
        if stalled:
            logger.warning(f"step {step + 1}: {stalled}")
        elif step + 1 == last and (closing := self.stall_watch.closing()):
            logger.warning(f"{self.name} ended: {closing}")
        return {"teacher_temp": self.teacher_temp(step), "momentum": self.momentum(step)}

    # ------------------------------------------------------------------------------ validation and export --

    def landmark_choice(self) -> LandmarkChoice:
        """The landmarks the teacher is verified with: the frozen landmark network's, else the training data's."""
        cfg = self.cfg
        if cfg.landmark_predictor:
            return LandmarkChoice(PREDICTOR, PREDICTOR, True, False, cfg.encoder.landmark_set, cfg.data.image_size)
        source = data_landmark_source(cfg.data.landmarks)
        return LandmarkChoice(source, source, True, True, cfg.encoder.landmark_set, cfg.data.image_size)

    @property
    def validates(self) -> bool:
        return bool(self.cfg.eval_bins)

    def validate(self, step: int) -> dict[str, float]:
        """k-fold verification accuracy of the teacher backbone on every ``eval_bins`` set and their mean; a new
        best mean keeps the teacher in ``best/encoder``."""
        assert self.eval_sets is not None  # loaded on the main process, the only one that validates
        teacher = self.teacher.backbone
        encoder = teacher if self.landmark_predictor is None else ImageEncoder(teacher, self.landmark_predictor)
        record = self.eval_sets.verify(encoder, self.run.device, self.cfg.eval_batch_size)
        save = functools.partial(self.export, step=step)
        return keep_best(record, self.run.state, self.cfg.output_dir / "best", step, save)

    def export(self, run_dir: Path, step: int) -> dict[str, Path]:
        """The teacher's backbone as ``run_dir/encoder``, recording the landmark source of the training data."""
        source = {"stage": "lafs-pretrain", "run_dir": str(self.cfg.output_dir), "step": step, "weights": "teacher"}
        if self.landmark_predictor is not None:  # its tokens were placed by the network: it goes with the encoder
            source["landmark_predictor"] = self.cfg.landmark_predictor
            save_encoder(
                self.teacher.backbone, run_dir / "encoder", source, self.landmark_predictor, landmark_source=PREDICTOR
            )
        else:
            landmarks = data_landmark_source(self.cfg.data.landmarks)
            save_encoder(self.teacher.backbone, run_dir / "encoder", source, landmark_source=landmarks)
        return {"encoder": run_dir / "encoder"}


PRETRAIN = register_stage("pretrain", PretrainConfig, PretrainTask)
