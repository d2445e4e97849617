"""Fine-tuning: a (LAFS-pretrained) encoder becomes a face recogniser with a margin head and regularisers.

    accelerate launch finetune/train.py --config configs/finetune/<name>.yaml [key=value ...]
    python finetune/train.py ...             (the same, one process)

Top-level keys as in pretraining: ``output_dir``, ``max_steps``, ``resume`` (``auto`` | a checkpoint | ""), plus
``init``: a pretraining run directory or an exported encoder folder to start from ("" trains from scratch).
The run directory ends up holding config.yaml, few_shot.csv (with ``data.shots``), checkpoints/, log.jsonl,
tensorboard/, encoder/ (the final encoder), landmark_predictor/ (when one is trained) and, with validation sets,
best/ (the encoder of the best mean validation accuracy, with best.json).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):
    # `accelerate launch finetune/train.py` runs this file as a script: put the repository root first on the path.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, set_seed
from timm.optim import create_optimizer_v2
from torch import nn
from torch.utils.data import DataLoader, Dataset

from finetune.augment import AugmentConfig, BatchMixup, random_flip
from finetune.context import Communicator
from finetune.heads import HeadConfig, build_head
from finetune.model import FinetuneModel
from finetune.objective import build_objective
from finetune.regularisers import RegularisersConfig
from lafs.accelerator import build_accelerator, use_fused_adamw
from lafs.checkpoints import TrainState, find_resume_point, save_checkpoint
from lafs.cli import entry_point
from lafs.config import parse_cli, save_config
from lafs.data.collate import collate_faces, normalize_images
from lafs.data.open import DatasetConfig, few_shot_subset, open_dataset
from lafs.data.pairs import load_bin
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig
from lafs.dino import cosine_schedule
from lafs.errors import ConfigError, DataError
from lafs.evaluation.verification import evaluate_pairs
from lafs.export import PREDICTOR_FOLDER, load_encoder, save_encoder
from lafs.files import write_atomic
from lafs.landmarks import get_landmark_set
from lafs.models import EncoderConfig, build_encoder
from lafs.models.image_encoder import ImageEncoder
from lafs.models.landmark_predictor import (
    LandmarkPredictor,
    LandmarkPredictorConfig,
    build_landmark_predictor,
    load_landmark_predictor,
    save_landmark_predictor,
)
from lafs.models.vit import LandmarkViT
from lafs.run_log import RunLog
from lafs.training import progress_bar, training_batches, write_weights_hash

logger = logging.getLogger("lafs.finetune")
SYNTHETIC = "synthetic"


@dataclass
class OptimConfig:
    epochs: int = 34  # LAFS fine-tuning length
    batch_size: int = 200  # per process (LAFS)
    grad_accum: int = 3  # micro-batches per optimiser step (LAFS)
    lr: float = 2.29e-3  # at lr_reference_batch: LAFS's rule gives 2.29e-3 for 2 GPUs x 200 x 3
    lr_reference_batch: int = 1200  # total batch (processes x batch_size x grad_accum) that ``lr`` is set for
    lr_scaling: Literal["none", "linear", "sqrt"] = "sqrt"  # LAFS scales the learning rate with sqrt(total batch)
    min_lr: float = 1e-6  # end of the cosine decay
    warmup_epochs: float = 5.0  # linear warm-up (LAFS)
    weight_decay: float = 0.1  # AdamW (LAFS); biases, norms, tokenizer and position table get none
    layer_decay: float = 0.58  # layer-wise LR decay (LAFS): layer l of L trains at lr * 0.58^(L - l)
    clip_grad: float = 0.0  # max gradient norm; 0 = off (LAFS does not clip; CoReFace clips at 5)

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "grad_accum", "lr_reference_batch"):
            if getattr(self, key) < 1:
                raise ConfigError(f"optim.{key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"optim.warmup_epochs must lie in [0, optim.epochs], got {self.warmup_epochs}")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"optim.layer_decay must lie in (0, 1], got {self.layer_decay}")


@dataclass
class LandmarkSourceConfig:
    source: Literal["data", "predictor"] = "data"  # data: the dataset's (cache or template); predictor: learned
    predictor: str = ""  # folder written by tools/train_landmarks.py; "" starts an untrained one at the template
    predictor_backbone: str = "mobilenetv3_large_100"  # for an untrained predictor (LAFS: MobileNetV3-large)
    reference: Literal["frozen", "data"] = "frozen"  # what regularisers.landmark pulls towards (LAFS: frozen copy)


@dataclass
class FinetuneConfig:
    output_dir: Path = Path("runs/finetune")  # the run directory: config, checkpoints, logs, encoder
    max_steps: int | None = None  # stop after this many optimiser steps; the schedules still span all epochs
    resume: str = "auto"  # "auto" (newest checkpoint in output_dir, if any), a checkpoint path, or "" (fresh)
    init: str = ""  # a pretraining run directory or an exported encoder folder; "" = from scratch
    seed: int = 0  # weights, sampling order, flips and mixup derive from it
    data: DatasetConfig = field(default_factory=lambda: DatasetConfig(path=SYNTHETIC))  # path "synthetic": built-in
    synthetic: SyntheticFacesConfig = field(default_factory=SyntheticFacesConfig)  # used when data.path=synthetic
    # Without init: LAFS's ViT-B over 196 landmark tokens; with init, the architecture comes from that encoder.
    encoder: EncoderConfig = field(
        default_factory=lambda: EncoderConfig(name="lafs_vit_base_p8_112", drop_path_rate=0.1)
    )
    landmarks: LandmarkSourceConfig = field(default_factory=LandmarkSourceConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    regularisers: RegularisersConfig = field(default_factory=RegularisersConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # bf16 on GPUs that have it; "no" on CPU
    num_workers: int = 4  # data-loading processes per training process
    checkpoint_every: int = 1000  # optimiser steps between checkpoints (and one at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept; older ones are deleted
    log_every: int = 10  # optimiser steps between log lines
    eval_bins: list[str] = field(default_factory=list)  # .bin pair sets (LFW, CFP-FP, ...) validated during training
    eval_every: int = 0  # optimiser steps between validations (0 = only at the end, if eval_bins is set)
    eval_batch_size: int = 256  # images per forward during validation
    dump_rank_weights: bool = False  # each process writes a hash of its encoder and head (to check DDP sync)

    def validate(self) -> None:
        if self.encoder.landmark_set != self.data.landmark_set:
            raise ConfigError(
                f"encoder.landmark_set '{self.encoder.landmark_set}' must equal data.landmark_set "
                f"'{self.data.landmark_set}': the encoder embeds the landmarks the data carries"
            )
        if self.landmarks.source == "data" and self.data.landmarks == "none":
            raise ConfigError("data.landmarks=none needs landmarks.source=predictor (the encoder needs landmarks)")
        if self.regularisers.cluster.enabled and self.head.resolved_margins()[1] == 0:
            raise ConfigError("regularisers.cluster sets per-class angular margins (m2): use head.name=arcface")
        if self.regularisers.landmark.enabled and self.landmarks.source != "predictor":
            raise ConfigError("regularisers.landmark needs landmarks.source=predictor (there is nothing to restrain)")
        for key in ("checkpoint_every", "keep_checkpoints", "log_every", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        missing = [path for path in self.eval_bins if not Path(path).is_file()]
        if missing:  # checked on every process, so none waits for a main process that stopped
            raise ConfigError(f"eval_bins: no such file {missing[0]}")
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


def build_dataset(cfg: FinetuneConfig, record_subset: bool) -> _Positioned:
    """The labelled training set; ``record_subset``: this process writes a few-shot list into the run directory."""
    run_dir = cfg.output_dir if record_subset else None
    if cfg.data.path == SYNTHETIC:
        dataset: Any = SyntheticFaces(dataclasses.replace(cfg.synthetic, landmark_set=cfg.data.landmark_set))
        if cfg.data.shots is not None:
            dataset = few_shot_subset(dataset, cfg.data.shots, cfg.data.seed, run_dir)
    else:
        options = dataclasses.asdict(cfg.data)
        dataset = open_dataset(options.pop("path"), run_dir=run_dir, **options)
    if dataset.num_classes < 2:
        raise DataError(f"{cfg.data.path}: {dataset.num_classes} identity; a margin head needs at least 2")
    return _Positioned(dataset)


def initial_encoder(cfg: FinetuneConfig) -> LandmarkViT:
    """The encoder to fine-tune: loaded from ``init`` (a run directory or an encoder folder), or untrained."""
    if not cfg.init:
        return build_encoder(cfg.encoder)
    path = Path(cfg.init)
    folder = path / "encoder" if (path / "encoder" / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        raise ConfigError(f"init={cfg.init}: not a pretraining run directory or an exported encoder folder")
    encoder = load_encoder(folder, drop_path_rate=cfg.encoder.drop_path_rate)
    if encoder.landmark_set != cfg.data.landmark_set:
        raise ConfigError(
            f"init={cfg.init}: encoder uses landmark set {encoder.landmark_set}, data.landmark_set is "
            f"{cfg.data.landmark_set}"
        )
    logger.info(f"initialised from {folder} ({encoder.pretrained_cfg['architecture']}; encoder.name is unused)")
    return encoder


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


def build_optimizer(model: FinetuneModel, cfg: OptimConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW with layer-wise LR decay through the encoder's group matcher (timm); each group keeps ``lr_scale``.

    ``fused``: torch's single-kernel AdamW (CUDA parameters only).
    """
    return create_optimizer_v2(
        model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay, fused=fused
    )


class Schedule:
    """Warm-up then cosine learning rate, per optimiser step."""

    def __init__(self, cfg: OptimConfig, steps_per_epoch: int, total_batch: int) -> None:
        ratio = total_batch / cfg.lr_reference_batch
        factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[cfg.lr_scaling]
        self.base_lr, self.min_lr = cfg.lr * factor, cfg.min_lr
        self.steps_per_epoch = steps_per_epoch
        self.total = cfg.epochs * steps_per_epoch
        self.warmup = round(cfg.warmup_epochs * steps_per_epoch)

    def lr(self, step: int) -> float:
        return cosine_schedule(step, self.total, self.base_lr, self.min_lr, self.warmup)

    def epoch(self, step: int) -> float:
        return step / self.steps_per_epoch


@dataclass
class Run:
    """Everything the training loop touches."""

    cfg: FinetuneConfig
    accelerator: Accelerator
    loader: Any
    model: Any
    reference_predictor: LandmarkPredictor | None
    optimizer: Any
    schedule: Schedule
    state: TrainState
    log: RunLog
    bar: Any
    flip_permutation: torch.Tensor
    mixup: BatchMixup | None
    eval_sets: dict[str, tuple[Any, Any]]


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_cli(argv, FinetuneConfig, description=__doc__.split("\n\n")[0])
    # DDP must not copy rank 0's buffers over the others' each step: memory banks are large and kept in step anyway.
    accelerator = build_accelerator(cfg.mixed_precision, cfg.optim.grad_accum, broadcast_buffers=False)
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.ERROR, format="%(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    run_dir = cfg.output_dir
    if accelerator.is_main_process:
        save_config(cfg, run_dir)
    # Identical initial weights on every process, and identical mixup decisions later: a mixed batch skips the
    # pair terms, whose all-gathers every process must then skip together.
    set_seed(cfg.seed)

    dataset = build_dataset(cfg, record_subset=accelerator.is_main_process)
    loader = DataLoader(
        dataset,
        batch_size=cfg.optim.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        collate_fn=collate_faces,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    encoder, predictor = initial_encoder(cfg), initial_predictor(cfg)
    head = build_head(cfg.head, dataset.num_classes, encoder.num_features)
    objective = build_objective(
        head,
        cfg.regularisers,
        num_classes=dataset.num_classes,
        embed_dim=encoder.num_features,
        num_samples=len(dataset),
    )
    model = FinetuneModel(encoder, objective, predictor)
    reference = None
    if predictor is not None and cfg.landmarks.reference == "frozen":
        reference = copy.deepcopy(predictor).eval().requires_grad_(False)
    optimizer = build_optimizer(model, cfg.optim, fused=use_fused_adamw(accelerator))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if reference is not None:
        reference.to(accelerator.device)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    resume_from = find_resume_point(cfg.resume, run_dir / "checkpoints")
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        logger.info(f"resumed from {resume_from} at step {state.step}")

    steps_per_epoch = len(loader) // cfg.optim.grad_accum  # the loader is this process's shard by now
    if steps_per_epoch < 1:
        raise ConfigError(
            f"{len(dataset)} images give each of {accelerator.num_processes} processes fewer batches of "
            f"{cfg.optim.batch_size} than optim.grad_accum={cfg.optim.grad_accum}"
        )
    total_batch = cfg.optim.batch_size * cfg.optim.grad_accum * accelerator.num_processes
    schedule = Schedule(cfg.optim, steps_per_epoch, total_batch)
    target = schedule.total if cfg.max_steps is None else min(cfg.max_steps, schedule.total)
    eval_sets = {}
    if accelerator.is_main_process:
        eval_sets = {Path(path).stem: load_bin(path, cfg.data.image_size) for path in cfg.eval_bins}
    flip = torch.tensor(get_landmark_set(cfg.data.landmark_set).flip_permutation, device=accelerator.device)
    log = RunLog(run_dir, enabled=accelerator.is_main_process, resumed_from=state.step)
    bar = progress_bar(accelerator, target, state.step)
    mixup = BatchMixup(cfg.augment, dataset.num_classes) if cfg.augment.mixup_prob > 0 else None
    run = Run(cfg, accelerator, loader, model, reference, optimizer, schedule, state, log, bar, flip, mixup, eval_sets)
    try:
        train(run, target)
    finally:  # an interrupted run still flushes its log; its last checkpoint is already complete
        bar.close()
        log.close()

    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        source = {"stage": "finetune", "run_dir": str(run_dir), "step": state.step, "init": cfg.init}
        save_encoder(final.encoder, run_dir / "encoder", source)
        if final.landmark_predictor is not None:
            save_landmark_predictor(final.landmark_predictor, run_dir / PREDICTOR_FOLDER, source)
    if cfg.dump_rank_weights:
        final = accelerator.unwrap_model(model)
        trained = nn.ModuleDict({"encoder": final.encoder, "head": final.objective.head})
        write_weights_hash(trained, run_dir, accelerator.process_index)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def train(run: Run, target: int) -> None:
    """Optimiser steps from ``run.state.step`` to ``target``, with logging, validation and checkpoints."""
    cfg, accelerator, state, schedule = run.cfg, run.accelerator, run.state, run.schedule
    model, optimizer = run.model, run.optimizer
    objective = accelerator.unwrap_model(model).objective
    comm = Communicator(
        accelerator.is_main_process,
        accelerator.process_index,
        accelerator.gather,
        lambda t: broadcast(t, from_process=0),
    )
    if state.step >= target:
        return
    images_seen, clock = 0, time.perf_counter()
    batches = training_batches(accelerator, run.loader, state.step, schedule.steps_per_epoch, cfg.optim.grad_accum)
    for _, batch in batches:
        step = state.step
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr(step) * group.get("lr_scale", 1.0)
        inputs = prepare_inputs(run, batch)
        with accelerator.accumulate(model):
            terms = model(**inputs, epoch=schedule.epoch(step), step=step, comm=comm)
            accelerator.backward(terms["loss"])
            if accelerator.sync_gradients and cfg.optim.clip_grad > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        objective.update()
        images_seen += batch["image"].shape[0] * accelerator.num_processes
        if not accelerator.sync_gradients:
            continue
        state.step += 1
        run.bar.update(1)
        if state.step % cfg.log_every == 0 or state.step == target:
            record = log_record(state.step, terms, objective.lambdas(schedule.epoch(step)), schedule)
            record["images_per_second"] = images_seen / (time.perf_counter() - clock)
            run.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            run.log.write(state.step, record)
            images_seen, clock = 0, time.perf_counter()
        # The last step validates too, before its checkpoint, so the checkpoint holds the final best score.
        if cfg.eval_bins and ((cfg.eval_every and state.step % cfg.eval_every == 0) or state.step == target):
            validate(run)
        if state.step % cfg.checkpoint_every == 0 or state.step == target:
            save_checkpoint(accelerator, cfg.output_dir / "checkpoints", state.step, cfg.keep_checkpoints)
        if state.step >= target:
            return


def prepare_inputs(run: Run, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Model inputs from a loader batch: flips, mixup and the reference landmarks, all on the accelerator."""
    images, labels, landmarks = batch["image"], batch["label"], batch["landmarks"].float()
    images, landmarks = random_flip(images, landmarks, run.flip_permutation, run.cfg.augment.flip)
    images = normalize_images(images)
    soft_labels = None
    if run.mixup is not None:
        images, soft_labels, labels, landmarks = run.mixup(images, labels, landmarks)
    reference = landmarks
    if run.reference_predictor is not None:
        with torch.no_grad():
            reference = run.reference_predictor(images)
    return {
        "images": images,
        "labels": labels,
        "landmarks": landmarks,
        "soft_labels": soft_labels,
        "indices": batch["position"],
        "reference_landmarks": reference,
    }


def log_record(
    step: int, terms: dict[str, torch.Tensor], lambdas: dict[str, float], schedule: Schedule
) -> dict[str, float]:
    """One log line: every term, every regulariser weight, the learning rate and the epoch."""
    record = {name: float(value.detach()) for name, value in terms.items()}
    record |= {f"lambda_{name}": weight for name, weight in lambdas.items()}
    return record | {"epoch": schedule.epoch(step), "lr": schedule.lr(step - 1)}


def validate(run: Run) -> None:
    """k-fold accuracy on every validation set (main process); a new best mean accuracy saves the encoder."""
    accelerator, state = run.accelerator, run.state
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(run.model)
        encoder: nn.Module = ImageEncoder(model.encoder, model.landmark_predictor)
        record = {}
        for name, (images, issame) in run.eval_sets.items():
            folds = min(10, len(issame))  # the standard 10 folds; small home-made sets get one pair per fold
            report = evaluate_pairs(
                encoder, images, issame, batch_size=run.cfg.eval_batch_size, device=accelerator.device, folds=folds
            )
            record[f"{name}_accuracy"] = report["accuracy"]
        record["mean_accuracy"] = float(np.mean(list(record.values())))
        if record["mean_accuracy"] > state.best_score:
            state.best_score = record["mean_accuracy"]
            save_best(run, model, record)
        record["best_mean_accuracy"] = state.best_score
        run.log.write(state.step, record)
    # Every process holds the same best score, so a checkpoint written by any of them agrees.
    best = torch.tensor([state.best_score], dtype=torch.float64, device=accelerator.device)
    state.best_score = float(broadcast(best, from_process=0)[0])
    accelerator.wait_for_everyone()


def save_best(run: Run, model: FinetuneModel, record: dict[str, float]) -> None:
    best = run.cfg.output_dir / "best"
    source = {"stage": "finetune-best", "run_dir": str(run.cfg.output_dir), "step": run.state.step, **record}
    save_encoder(model.encoder, best / "encoder", source)
    if model.landmark_predictor is not None:
        save_landmark_predictor(model.landmark_predictor, best / PREDICTOR_FOLDER, source)
    write_atomic(best / "best.json", json.dumps({"step": run.state.step, **record}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
