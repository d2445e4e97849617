"""Fine-tuning as a task: a (LAFS-pretrained) encoder becomes a face recogniser with a margin head and regularisers.

The model is `FinetuneModel` (encoder, optional trainable landmark predictor, objective with the margin head and the
regularisers), so DDP synchronises the class centres with the encoder; with ``head.partial_fc`` each process holds a
shard of them instead (`finetune.partial_fc`), outside the model, trained and checkpointed per process. Each
micro-batch is augmented on the device (flips and the released LAFS transforms, landmarks moving with the image:
`finetune.device_augment`) and maybe mixed. The engine (`lafs.engine.fit`) runs the loop.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast
from timm.optim import create_optimizer_v2
from torch import nn
from torch.utils.data import Dataset

from finetune.context import Communicator, differentiable_gather
from finetune.device_augment import AugmentConfig, BatchMixup, augment_batch
from finetune.heads import HeadConfig, MarginHead, build_head
from finetune.model import FinetuneModel
from finetune.objective import build_objective
from finetune.partial_fc import PartialFC, build_partial_fc
from finetune.regularisers import RegularisersConfig
from lafs.engine import OptimConfig, RunConfig, RunContext, Task, TrainingParts, register_stage
from lafs.engine.accelerator import use_fused_adamw
from lafs.engine.memory import value_bytes, vit_activation_elements
from lafs.errors import ConfigError, DataError
from lafs.evaluation.during_training import ValidationSets, check_eval_bins, keep_best
from lafs.export import (
    PREDICTOR_FOLDER,
    encoder_folder,
    load_encoder,
    predictor_folder,
    recorded_landmark_set,
    save_encoder,
)
from lafs.export.released import load_released_head
from lafs.landmarks import get_landmark_set
from lafs.landmarks.provenance import PREDICTOR, LandmarkChoice, data_landmark_source
from lafs.models import (
    Encoder,
    EncoderConfig,
    LandmarkViT,
    PartFViT,
    build_any_encoder,
    encoder_name,
    takes_landmarks,
)
from lafs.models.image_encoder import ImageEncoder
from lafs.models.landmark_predictor import (
    LandmarkPredictor,
    LandmarkPredictorConfig,
    build_landmark_predictor,
    load_landmark_predictor,
    save_landmark_predictor,
)
from lafs.schedules import LAFS_FINETUNE_EPOCHS, LrScaling, WarmupCosine, warmup_cosine

logger = logging.getLogger("lafs.finetune")


@dataclass
class FinetuneOptimConfig(OptimConfig):
    name: Literal["adamw", "sgd"] = "adamw"  # adamw (LAFS); sgd: momentum SGD, no Nesterov (arcface_torch, papers)
    momentum: float = 0.9  # sgd only (arcface_torch, UNPG, CoReFace)
    epochs: int = 34  # LAFS fine-tuning length
    batch_size: int = 200  # per process (LAFS)
    grad_accum: int = 3  # micro-batches per optimiser step (LAFS)
    clip_grad: float = 0.0  # max gradient norm; 0 = off (LAFS does not clip; CoReFace clips at 5)
    lr: float = 2.29e-3  # at lr_reference_batch: LAFS's rule gives 2.29e-3 for 2 GPUs x 200 x 3
    lr_reference_batch: int = 1200  # total batch (processes x batch_size x grad_accum) that ``lr`` is set for
    lr_scaling: LrScaling = "sqrt"  # LAFS scales the learning rate with sqrt(total batch)
    min_lr: float = 1e-6  # end of the cosine decay
    warmup_epochs: float = 5.0  # linear warm-up (LAFS)
    weight_decay: float = 0.1  # AdamW (LAFS); biases, norms, tokenizer and position table get none
    # Layer-wise LR decay, ours (timm's groups; the engine applies each group's lr_scale): layer l of L trains at
    # lr * layer_decay^(L - l), the stem and landmark predictor at layer 0. The released LAFS code builds 0.58 groups
    # but its torch optimiser and schedulers never read lr_scale, so every layer trains at the full rate there:
    # 1.0 is the released behaviour (the LAFS recipe configs set it).
    layer_decay: float = 0.58

    def validate(self) -> None:
        super().validate()
        if self.lr_reference_batch < 1:
            raise ConfigError(f"optim.lr_reference_batch must be >= 1, got {self.lr_reference_batch}")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"optim.layer_decay must lie in (0, 1], got {self.layer_decay}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"optim.momentum must lie in [0, 1), got {self.momentum}")
        decays = {"weight_decay": self.weight_decay}
        self.check_recipe(self.warmup_epochs, self.lr, self.min_lr, decays, recipe_epochs=LAFS_FINETUNE_EPOCHS)


@dataclass
class LandmarkSourceConfig:
    source: Literal["data", "predictor"] = "data"  # data: the dataset's (cache or template); predictor: learned
    predictor: str = ""  # folder written by tools/train_landmarks.py; "" starts an untrained one at the template
    predictor_backbone: str = "mobilenetv3_large_100"  # for an untrained predictor (LAFS: MobileNetV3-large)
    reference: Literal["frozen", "data"] = "frozen"  # what regularisers.landmark pulls towards (LAFS: frozen copy)


@dataclass
class FinetuneConfig(RunConfig):
    output_dir: Path = Path("runs/finetune")  # the run directory: config, checkpoints, logs, encoder
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    num_workers: int = 4  # data-loading processes per training process (kept alive across epochs)
    checkpoint_every: int = 1000  # optimiser steps between checkpoints (and one at the end)
    init: str = ""  # a pretraining run directory or an exported encoder folder; "" = from scratch
    # Without init: LAFS's ViT-B over 196 landmark tokens; with init, the architecture comes from that encoder.
    encoder: EncoderConfig = field(
        default_factory=lambda: EncoderConfig(name="lafs_vit_base_p8_112", drop_path_rate=0.1)
    )
    landmarks: LandmarkSourceConfig = field(default_factory=LandmarkSourceConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    regularisers: RegularisersConfig = field(default_factory=RegularisersConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval_bins: list[str] = field(default_factory=list)  # .bin pair sets (LFW, CFP-FP, ...) validated during training
    eval_batch_size: int = 256  # images per forward during validation

    def validate(self) -> None:
        super().validate()
        self.encoder.require_landmark_set(self.data.landmark_set)
        if self.landmarks.source == "data" and self.data.landmarks == "none":
            raise ConfigError("data.landmarks=none needs landmarks.source=predictor (the encoder needs landmarks)")
        if self.regularisers.cluster.enabled and self.head.resolved_margins()[1] == 0:
            raise ConfigError("regularisers.cluster sets per-class angular margins (m2): use head.name=arcface")
        if self.regularisers.landmark.enabled and self.landmarks.source != "predictor":
            raise ConfigError("regularisers.landmark needs landmarks.source=predictor (there is nothing to restrain)")
        if self.eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        check_eval_bins(self.eval_bins)  # on every process: none waits for a failed one
        if self.augment.mixup_prob > 0 and self.optim.batch_size % 2:
            raise ConfigError("augment.mixup_prob > 0 needs an even optim.batch_size (timm pairs images)")


class _Positioned(Dataset):
    """Adds ``position`` (the item's place in the training set): memory banks key on it."""

    def __init__(self, base: Any) -> None:
        self.base, self.labels, self.num_classes = base, np.asarray(base.labels), base.num_classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.base[i], "position": i}


def training_landmarks(cfg: FinetuneConfig) -> LandmarkChoice:
    """The landmarks a run trains with: the learned predictor, or the training data's (template or a cache's)."""
    source = PREDICTOR if cfg.landmarks.source == "predictor" else data_landmark_source(cfg.data.landmarks)
    return LandmarkChoice(source, source, True, source != PREDICTOR, cfg.data.landmark_set, cfg.data.image_size)


def initial_encoder(cfg: FinetuneConfig) -> Encoder:
    """The encoder to fine-tune: loaded from ``init`` (a run directory or an encoder folder), or untrained."""
    if not cfg.init:
        wanted = cfg.encoder
        if not wanted.takes_landmarks and "img_size" not in wanted.model_args:
            # Built for the run's input, so its folder records the size every consumer resizes to (64 px crops
            # evaluated at 112 px would be another scale).
            wanted = dataclasses.replace(wanted, model_args={**wanted.model_args, "img_size": cfg.data.image_size})
        return build_any_encoder(wanted)
    try:
        folder = encoder_folder(cfg.init)
    except DataError as error:
        raise ConfigError(f"init={error}") from None
    encoder = load_encoder(folder, drop_path_rate=cfg.encoder.drop_path_rate)
    network = predictor_folder(folder)
    placed = cfg.landmarks.source == "predictor" and bool(cfg.landmarks.predictor)
    if isinstance(encoder, PartFViT) and network is not None and not placed:
        # Its position table belongs to its landmark network's points: other landmarks would be silently wrong.
        raise ConfigError(
            f"init={cfg.init} is a released Part fViT placed by its landmark network: add "
            f"landmarks.source=predictor landmarks.predictor={network}"
        )
    if takes_landmarks(encoder) and encoder.landmark_set != cfg.data.landmark_set:
        raise ConfigError(
            f"init={cfg.init}: encoder uses landmark set {encoder.landmark_set}, data.landmark_set is "
            f"{cfg.data.landmark_set}"
        )
    logger.info(f"initialised from {folder} ({encoder_name(encoder)}; encoder.name is unused)")
    return encoder


def check_landmark_options(cfg: FinetuneConfig, encoder: Encoder) -> None:
    """`ConfigError` (one line) for landmark options that an image-only encoder (IResNet, timm:) cannot use."""
    if cfg.landmarks.source == "predictor" and not takes_landmarks(encoder):
        options = "landmarks.source=predictor" + (
            " and regularisers.landmark" if cfg.regularisers.landmark.enabled else ""
        )
        raise ConfigError(
            f"{options} need a landmark-token encoder (lafs_vit_*): {encoder_name(encoder)} reads images only"
        )


def initial_predictor(cfg: FinetuneConfig) -> LandmarkPredictor | None:
    """The trainable landmark predictor (loaded, or untrained at the template), or None for dataset landmarks."""
    if cfg.landmarks.source != "predictor":
        return None
    if cfg.landmarks.predictor:
        predictor = load_landmark_predictor(cfg.landmarks.predictor)
    else:
        predictor = build_landmark_predictor(
            LandmarkPredictorConfig(
                backbone=cfg.landmarks.predictor_backbone,
                landmark_set=cfg.data.landmark_set,
                image_size=cfg.data.image_size,
            )
        )
    if predictor.cfg.landmark_set != cfg.data.landmark_set:
        raise ConfigError(
            f"landmarks.predictor predicts {predictor.cfg.landmark_set}, data.landmark_set is {cfg.data.landmark_set}"
        )
    return predictor


def build_optimizer(model: FinetuneModel, cfg: FinetuneOptimConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW or momentum SGD (``cfg.name``) with layer-wise LR decay through the encoder's group matcher (timm);
    each group keeps ``lr_scale`` (all 1 with ``layer_decay`` 1, the released LAFS behaviour).

    ``fused``: torch's single-kernel AdamW (CUDA parameters only).
    """
    if cfg.name == "sgd":  # timm's "momentum": torch SGD without Nesterov, as arcface_torch builds it
        options: dict[str, Any] = {"opt": "momentum", "momentum": cfg.momentum}
    else:
        options = {"opt": "adamw", "fused": fused}
    return create_optimizer_v2(model, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay, **options)


def learning_rate_schedule(cfg: FinetuneOptimConfig, steps_per_epoch: int, total_batch: int) -> WarmupCosine:
    """Warm-up then cosine learning rate, per optimiser step, ``optim.lr`` scaled by ``optim.lr_scaling``.

    ``optim.warmup_epochs`` is LAFS's 5 of 34 epochs: ``optim.schedules=relative`` stretches it to the run.
    """
    stretch = cfg.stretch(LAFS_FINETUNE_EPOCHS)
    if cfg.schedules == "relative":
        logger.info(
            f"optim.schedules=relative, LAFS fine-tuning's {LAFS_FINETUNE_EPOCHS} epochs -> {cfg.epochs}: "
            f"optim.warmup_epochs {cfg.warmup_epochs:g} -> {cfg.warmup_epochs * stretch:.4g}"
        )
    return warmup_cosine(
        cfg.lr, cfg.min_lr, cfg.warmup_epochs, steps_per_epoch, cfg.epochs * steps_per_epoch, stretch,
        cfg.lr_scaling, total_batch, cfg.lr_reference_batch,
    )  # fmt: skip


def start_from_imported_head(cfg: FinetuneConfig, head: MarginHead) -> None:
    """Continue an imported released classifier (``margin_head.safetensors`` beside the ``init`` encoder) when it
    has this run's shape: the same identities, as when fine-tuning further on the released training set."""
    if not cfg.init:
        return
    weight = load_released_head(encoder_folder(cfg.init))
    if weight is None:
        return
    if weight.shape != head.weight.shape:
        logger.warning(
            f"init={cfg.init}: its classifier has {tuple(weight.shape)} centres, this run needs "
            f"{tuple(head.weight.shape)}: the head starts untrained"
        )
        return
    head.load_state_dict({"weight": weight})
    logger.info(f"head: continues the imported classifier of {cfg.init} ({weight.shape[0]} classes)")


class FinetuneTask(Task):
    """Encoder (+ optional trainable landmark predictor) + objective; augmented, mixed batches; best model."""

    name = "finetune"
    # (init is not: a resumed run's weights come from its checkpoint.)
    fixed_on_resume = ("data", "synthetic", "encoder", "landmarks", "head", "regularisers")
    broadcast_buffers = False  # memory banks are large, and every process keeps them identical on its own

    def __init__(self, cfg: FinetuneConfig) -> None:
        super().__init__(cfg)
        self.cfg: FinetuneConfig = cfg
        self.eval_sets: ValidationSets | None = None

    def landmark_set_sources(self) -> dict[str, str]:
        """The data's landmark cache (`Task.landmark_set_sources`) and the ``init`` encoder, which fixes its set."""
        sources = super().landmark_set_sources()
        if self.cfg.init:
            with contextlib.suppress(DataError):  # a bad init is reported when it is loaded
                recorded = recorded_landmark_set(encoder_folder(self.cfg.init))
                if recorded is not None:
                    sources[f"init={self.cfg.init}"] = recorded
        return sources

    def build_dataset(self, accelerator: Accelerator) -> _Positioned:
        """The labelled training set, each item with its ``position`` in it."""
        dataset = self.open_faces(accelerator)
        if dataset.num_classes < 2:
            raise DataError(f"{self.cfg.data.path}: {dataset.num_classes} identity; a margin head needs at least 2")
        return _Positioned(dataset)

    def build(self, accelerator: Accelerator, dataset: Any) -> TrainingParts:
        cfg = self.cfg
        encoder = initial_encoder(cfg)
        check_landmark_options(cfg, encoder)
        predictor = initial_predictor(cfg)
        self.used: dict[str, str] = {"encoder": encoder_name(encoder)}
        if predictor is not None:
            self.used["predictor_backbone"] = predictor.cfg.backbone
        head: MarginHead | PartialFC
        if cfg.head.partial_fc.enabled:
            processes, rank = accelerator.num_processes, accelerator.process_index
            head = build_partial_fc(
                cfg.head, dataset.num_classes, encoder.num_features, processes=processes, rank=rank, seed=cfg.seed
            )
        else:
            head = build_head(cfg.head, dataset.num_classes, encoder.num_features)
            start_from_imported_head(cfg, head)
        self.objective = build_objective(
            head,
            cfg.regularisers,
            num_classes=dataset.num_classes,
            embed_dim=encoder.num_features,
            num_samples=len(dataset),
            optim=cfg.optim,
        )
        model = FinetuneModel(encoder, self.objective, predictor)
        # regularisers.landmark pulls the trained predictor towards a frozen copy of where it started (LAFS).
        self.reference: LandmarkPredictor | None = None
        if predictor is not None and cfg.landmarks.reference == "frozen":
            self.reference = copy.deepcopy(predictor).eval().requires_grad_(False)
        optimizer = build_optimizer(model, cfg.optim, fused=use_fused_adamw(accelerator))
        self.mixup = BatchMixup(cfg.augment, dataset.num_classes) if cfg.augment.mixup_prob > 0 else None
        on_device: list[nn.Module] = [self.reference] if self.reference is not None else []
        if not isinstance(head, PartialFC):
            return TrainingParts(model, optimizer, on_device)
        # The shard lives outside the DDP-wrapped model: trained by the run's optimiser, placed and saved per process.
        head.add_to(optimizer, cfg.optim.weight_decay)
        return TrainingParts(model, optimizer, [*on_device, head], checkpointed=[head])

    def resolved_config(self) -> FinetuneConfig:
        encoder = dataclasses.replace(self.cfg.encoder, name=self.used["encoder"])
        landmarks = self.cfg.landmarks
        if "predictor_backbone" in self.used:
            landmarks = dataclasses.replace(landmarks, predictor_backbone=self.used["predictor_backbone"])
        return dataclasses.replace(self.cfg, encoder=encoder, landmarks=landmarks)

    memory_advice = "On a CPU use configs/cpu/finetune.yaml (ResNet-18 at 64 px, batch 64), or lower optim.batch_size."

    def activation_bytes(self, parts: TrainingParts, batch_size: int) -> int | None:
        """A landmark ViT's blocks over its tokens (`lafs.engine.memory`) and the margin head's class scores (cosines,
        margin logits, softmax) per image, times the batch; None for image-only encoders (not estimated)."""
        encoder = getattr(parts.model, "encoder", None)
        if not isinstance(encoder, LandmarkViT):
            return None
        partial = self.cfg.head.partial_fc
        classes = self.faces.num_classes * (partial.sample_rate if partial.enabled else 1.0)  # Partial FC's share
        values = vit_activation_elements(encoder, [1 + encoder.num_landmarks]) + int(3 * classes)
        return batch_size * values * value_bytes(self.cfg.mixed_precision)

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        accelerator = run.accelerator
        self.lr_schedule = learning_rate_schedule(self.cfg.optim, run.steps_per_epoch, run.total_batch)
        self.comm = Communicator(
            is_main=accelerator.is_main_process,
            rank=accelerator.process_index,
            gather=accelerator.gather,
            gather_with_grad=differentiable_gather if accelerator.num_processes > 1 else (lambda t: t),
            broadcast=lambda t: broadcast(t, from_process=0),
        )
        landmark_set = get_landmark_set(self.cfg.data.landmark_set)
        self.flip_permutation = torch.tensor(landmark_set.flip_permutation, device=run.device)
        # Validation and the saved encoders use the landmarks the training data had.
        self.landmark_choice = training_landmarks(self.cfg)
        if accelerator.is_main_process:
            workers = max(1, self.cfg.num_workers)
            self.eval_sets = ValidationSets(self.cfg.eval_bins, self.landmark_choice, workers, self.cfg.output_dir)

    def learning_rate(self, step: int) -> float:
        return self.lr_schedule(step)

    def training_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        """The objective's terms on one micro-batch, augmented, maybe mixed, with reference landmarks."""
        assert self.model is not None
        inputs = self.prepare_inputs(batch)
        return self.model(**inputs, epoch=self.epoch(step), step=step, comm=self.comm)

    def prepare_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Model inputs from a loader batch: augmentation (`augment_batch`), mixup and the reference landmarks, all on
        the accelerator."""
        images, labels, landmarks = batch["image"], batch["label"], batch.get("landmarks")
        landmarks = None if landmarks is None else landmarks.float()
        images, landmarks = augment_batch(
            images, landmarks, self.cfg.augment, self.flip_permutation, self._augment_generator(images.device)
        )
        soft_labels = None
        if self.mixup is not None:
            images, soft_labels, labels, landmarks = self.mixup(images, labels, landmarks)
        reference = landmarks
        if self.reference is not None:
            with torch.no_grad():
                reference = self.reference(images)
        return {
            "images": images,
            "labels": labels,
            "landmarks": landmarks,
            "soft_labels": soft_labels,
            "indices": batch["position"],
            "reference_landmarks": reference,
        }

    def _augment_generator(self, device: torch.device) -> torch.Generator:
        """A generator for one micro-batch's augmentation, seeded from torch's global generator (seeded by the run's
        seed and restored on resume with the checkpoint) and the process index, so processes draw differently."""
        draw = int(torch.randint(2**62, (1,)))
        seed = np.random.SeedSequence([draw, self.run.accelerator.process_index]).generate_state(1, np.uint64)[0]
        return torch.Generator(device).manual_seed(int(seed >> 1))

    def after_micro_batch(self, step: int) -> None:
        self.objective.update()  # memory banks and clustering, from the micro-batch just trained on

    def log_values(self, step: int, terms: Mapping[str, float]) -> dict[str, float]:
        return {f"lambda_{name}": weight for name, weight in self.objective.lambdas(self.epoch(step)).items()}

    @property
    def validates(self) -> bool:
        return bool(self.cfg.eval_bins)

    def validate(self, step: int) -> dict[str, float]:
        """k-fold accuracy on every validation set with the training data's landmarks; a new best mean accuracy
        saves the encoder to ``best/``."""
        model = self.run.accelerator.unwrap_model(self.model)
        encoder: nn.Module = ImageEncoder(model.encoder, model.landmark_predictor)
        assert self.eval_sets is not None  # loaded on the main process, the only one that validates
        record = self.eval_sets.verify(encoder, self.run.device, self.cfg.eval_batch_size)
        save = functools.partial(self._save, model, source={"stage": "finetune-best", "step": step, **record})
        return keep_best(record, self.run.state, self.cfg.output_dir / "best", step, save)

    def export(self, run_dir: Path, step: int) -> dict[str, Path]:
        model = self.run.accelerator.unwrap_model(self.model)
        return self._save(model, run_dir, {"stage": "finetune", "step": step, "init": self.cfg.init})

    def _save(self, model: FinetuneModel, folder: Path, source: dict[str, Any]) -> dict[str, Path]:
        """The encoder (and the trained landmark predictor) as stand-alone folders under ``folder``."""
        source = {"run_dir": str(self.cfg.output_dir), **source}
        save_encoder(model.encoder, folder / "encoder", source, landmark_source=self.landmark_choice.source)
        written = {"encoder": folder / "encoder"}
        if model.landmark_predictor is not None:
            save_landmark_predictor(model.landmark_predictor, folder / PREDICTOR_FOLDER, source)
            written["landmark predictor"] = folder / PREDICTOR_FOLDER
        return written

    def synced_weights(self) -> nn.Module:
        """The encoder and the replicated head (Partial FC's shards differ between processes by design)."""
        model = self.run.accelerator.unwrap_model(self.model)
        head = model.objective.head
        return nn.ModuleDict({"encoder": model.encoder} | ({} if isinstance(head, PartialFC) else {"head": head}))


FINETUNE = register_stage("finetune", FinetuneConfig, FinetuneTask)
