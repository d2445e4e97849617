"""Training-step figures: a full LAFS pretraining / fine-tuning step against a plain timm ViT doing the same step.

The reference is timm's `VisionTransformer` of the same width, depth, heads and MLP ratio, on grid images whose
8-pixel patches give the same token counts (K for globals and fine-tuning, k for local views), with the same DINO
head and loss, margin head, optimiser, clipping and EMA. The ratio is therefore the cost of landmark tokens (the
grid_sample tokenizer and id-indexed positions) over grid tokens. Inputs are made once on the device: the step only,
no data pipeline.

The candidate is the stages' own task (`PretrainTask`, `FinetuneTask`) stepped by the engine's
`train_micro_batch`, so the figure times the code a run executes; the reference is the same task with its backbone
swapped for the plain ViT. The step builders (`build_pretrain_step`, `build_finetune_step`) are importable so
`tools.benchmarks.gpu` can count their FLOPs and time them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from accelerate import Accelerator
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from finetune.model import FinetuneModel
from finetune.task import FinetuneConfig, FinetuneTask, build_optimizer
from lafs.engine import RunContext, Task, TrainingParts
from lafs.engine.accelerator import use_fused_adamw
from lafs.engine.checkpoints import TrainState
from lafs.engine.loop import train_micro_batch
from lafs.errors import ConfigError
from lafs.models import build_any_encoder, build_encoder
from lafs.models.multiview import MultiViewEncoder
from lafs.models.vit import LandmarkViT, block_dims
from lafs.tasks.pretrain import DinoConfig, PretrainConfig, PretrainTask, build_models, optimizer_groups
from tools.benchmarks.common import DEFAULT_ENCODER, figure, resolve_device, result, time_side_by_side

Precision = Literal["auto", "fp32", "bf16"]
LANDMARK_JITTER = 5.0  # pixels, ViewConfig.jitter_std: landmarks off the template as real views carry them


# ------------------------------------------------------------------------------------------------ shared pieces --


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """bfloat16 for ``bf16`` (``auto``: on CUDA only); None means float32 without autocast."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"--precision must be auto, fp32 or bf16, got {precision}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def grid_shape(tokens: int) -> tuple[int, int]:
    """(rows, columns) with rows * columns = tokens, as square as possible (rows <= columns)."""
    rows = max(d for d in range(1, math.isqrt(tokens) + 1) if tokens % d == 0)
    return rows, tokens // rows


class PlainViT(VisionTransformer):
    """timm's grid-patch ViT with LandmarkViT's call signature: landmarks, ids and masks are accepted and ignored.

    Built with ``dynamic_img_size=True`` so one model takes the global grid and the smaller local grids (the position
    table is resampled for the latter, as timm does).
    """

    def forward(  # type: ignore[override]
        self,
        images: torch.Tensor,
        landmarks: torch.Tensor | None = None,
        landmark_ids: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pooled embedding (batch, dim) of images (batch, 3, 8 rows, 8 columns)."""
        return super().forward(images)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # The same no-decay set as LandmarkViT, so both optimisers see the same groups.
        return {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}


def plain_vit_like(model: LandmarkViT, drop_path_rate: float = 0.0) -> PlainViT:
    """A `PlainViT` of the landmark ViT's width, depth, heads and MLP ratio over a grid of K = num_landmarks tokens."""
    patch = int(model.patch_embed.patch_size[0])
    rows, columns = grid_shape(int(model.num_landmarks))
    heads, mlp_width = block_dims(model)
    plain = PlainViT(
        img_size=(patch * rows, patch * columns),
        patch_size=patch,
        embed_dim=int(model.embed_dim),
        depth=len(model.blocks),
        num_heads=heads,
        mlp_ratio=mlp_width / model.embed_dim,
        num_classes=0,
        dynamic_img_size=True,
        drop_path_rate=drop_path_rate,
    )
    same = (plain.embed_dim, len(plain.blocks), block_dims(plain)[0], plain.patch_embed.num_patches)
    wanted = (model.embed_dim, len(model.blocks), heads, model.num_landmarks)
    if same != wanted:  # a silent mismatch would make the ratio meaningless
        raise RuntimeError(f"plain ViT (width, depth, heads, tokens) {same} != landmark ViT {wanted}")
    return plain


def grid_images(batch: int, views: int, tokens: int, patch: int, seed: int) -> torch.Tensor:
    """Normalised random images (batch, views, 3, patch * rows, patch * columns) whose grid has ``tokens`` patches."""
    rows, columns = grid_shape(tokens)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, views, 3, patch * rows, patch * columns, generator=generator) * 2 - 1


def jittered(template: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Template landmarks (..., k, 2) broadcast to ``shape`` plus Gaussian jitter of LANDMARK_JITTER pixels."""
    return template.expand(*shape).cpu() + LANDMARK_JITTER * torch.randn(*shape, generator=generator)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class TrainingStep:
    """One training step as a callable; ``modules`` are what ``compile()`` compiles, ``info`` describes the setup."""

    run: Callable[[], None]
    modules: list[nn.Module]
    info: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> None:
        self.run()

    def compile(self) -> None:
        """torch.compile every module in place (after any FLOP counting, which needs eager mode)."""
        for module in self.modules:
            module.compile()


def make_accelerator(precision: Precision, device: torch.device) -> Accelerator:
    """The engine's accelerator on ``device``: bf16 autocast for ``bf16`` (``auto``: on CUDA), else float32."""
    mixed = "bf16" if autocast_dtype(precision, device) is not None else "no"
    return Accelerator(cpu=device.type == "cpu", mixed_precision=mixed)


def task_step(
    task: Task, parts: TrainingParts, batch: dict[str, torch.Tensor], accelerator: Accelerator, epochs: int
) -> Callable[[], None]:
    """One full optimiser step of ``task`` as the engine runs it (`lafs.engine.train_micro_batch`), in steady state.

    The task is set up for a run of ``epochs`` steps of one batch and stepped at its last step: past every warm-up
    (learning rate, teacher temperature, last-layer freeze), where a long run spends its time.
    """
    model, optimizer = accelerator.prepare(parts.model, parts.optimizer)
    for module in parts.on_device:
        module.to(accelerator.device)
    task.model = model
    batch_size = int(next(iter(batch.values())).shape[0])
    task.setup(RunContext(accelerator, TrainState(), 1, batch_size, epochs))
    on_device = {k: v.to(accelerator.device) for k, v in batch.items()}
    clip, clip_mode = task.cfg.optim.clip_grad, task.cfg.optim.clip_mode

    def run() -> None:
        train_micro_batch(accelerator, task, optimizer, on_device, epochs - 1, clip, clip_mode)

    return run


# ---------------------------------------------------------------------------------------------------- pretrain --


class _PlainPretrainTask(PretrainTask):
    """`PretrainTask` with plain grid-token ViTs of the same size as student and teacher backbones."""

    def build(self, accelerator: Accelerator, dataset: Any) -> TrainingParts:
        parts = super().build(accelerator, dataset)
        student = parts.model
        assert isinstance(student, MultiViewEncoder)
        landmark_vit = student.backbone
        student.backbone = plain_vit_like(landmark_vit, self.cfg.encoder.drop_path_rate)  # type: ignore[assignment]
        self.teacher.backbone = plain_vit_like(landmark_vit)  # type: ignore[assignment]
        self.teacher.load_state_dict(student.state_dict())
        self.teacher.requires_grad_(False)
        groups = optimizer_groups(student, self.cfg.optim.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=self.cfg.optim.lr, fused=use_fused_adamw(accelerator))
        return TrainingParts(student, optimizer, parts.on_device, parts.checkpointed)


def build_pretrain_step(
    encoder_name: str,
    batch: int,
    device: torch.device,
    plain: bool,
    *,
    num_local: int = 8,
    local_landmarks: int = 36,
    out_dim: int = 4096,
    precision: Precision = "auto",
    seed: int = 0,
) -> TrainingStep:
    """One LAFS pretraining step of `PretrainTask` (or the plain-ViT reference): student over 2 globals +
    ``num_local`` locals, teacher over the globals, DINO loss, backward, clip at 3, AdamW, EMA of the teacher.

    LAFS inputs: images (batch, views, 3, 112, 112), every view's landmarks (batch, views, K, 2) and data mask
    (batch, views, K; all valid, and the in-view test masks the jittered points that leave the crop), local ids
    (batch, locals, k). Plain inputs: grid images with K (globals) and k (locals) patches; the landmark tensors are
    passed and ignored.
    """
    cfg = PretrainConfig(dino=DinoConfig(out_dim=out_dim))
    cfg.encoder = dataclasses.replace(cfg.encoder, name=encoder_name)
    cfg.views = dataclasses.replace(cfg.views, num_local=num_local, local_landmarks=local_landmarks)
    task = _PlainPretrainTask(cfg) if plain else PretrainTask(cfg)
    accelerator = make_accelerator(precision, device)
    torch.manual_seed(seed)
    parts = task.build(accelerator, None)
    lafs_params = parameter_count(build_models(cfg)[0]) if plain else parameter_count(parts.model)
    backbone = parts.model.backbone
    lafs_backbone = build_encoder(cfg.encoder)
    num_landmarks, patch = int(lafs_backbone.num_landmarks), int(lafs_backbone.patch_embed.patch_size[0])

    generator = torch.Generator().manual_seed(seed)
    template = lafs_backbone.template
    ids_shape = (batch, num_local, local_landmarks)
    local_ids = torch.randint(0, num_landmarks, ids_shape, generator=generator)
    if plain:
        global_images = grid_images(batch, 2, num_landmarks, patch, seed)
        local_images = grid_images(batch, num_local, local_landmarks, patch, seed + 1)
    else:
        size = lafs_backbone.patch_embed.img_size
        global_images = torch.rand(batch, 2, 3, *size, generator=generator) * 2 - 1
        local_images = torch.rand(batch, num_local, 3, *size, generator=generator) * 2 - 1
    views = {
        "global_images": global_images,
        "global_landmarks": jittered(template, (batch, 2, num_landmarks, 2), generator),
        "global_valid": torch.ones(batch, 2, num_landmarks, dtype=torch.bool),
        "local_images": local_images,
        "local_landmarks": jittered(template, (batch, num_local, num_landmarks, 2), generator),
        "local_ids": local_ids,
        "local_valid": torch.ones(batch, num_local, num_landmarks, dtype=torch.bool),
    }
    run = task_step(task, parts, views, accelerator, cfg.optim.epochs)
    info = {
        "global_tokens": num_landmarks,
        "local_tokens": local_landmarks,
        "num_local": num_local,
        "out_dim": out_dim,
        "width": int(lafs_backbone.embed_dim),
        "depth": len(lafs_backbone.blocks),
        "parameters": parameter_count(parts.model),
        "lafs_parameters": lafs_params,
        "images": tuple(global_images.shape[-2:]),
        "local_images": tuple(local_images.shape[-2:]),
        "precision": "bf16" if autocast_dtype(precision, device) is not None else "fp32",
        "backbone": type(backbone).__name__,
    }
    return TrainingStep(run, [task.model, task.teacher], info)  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------------------- finetune --


class _PlainFinetuneTask(FinetuneTask):
    """`FinetuneTask` with a plain grid-token ViT of the same size as the encoder."""

    def build(self, accelerator: Accelerator, dataset: Any) -> TrainingParts:
        parts = super().build(accelerator, dataset)
        model = parts.model
        assert isinstance(model, FinetuneModel) and isinstance(model.encoder, LandmarkViT)
        model.encoder = plain_vit_like(model.encoder, self.cfg.encoder.drop_path_rate)  # type: ignore[assignment]
        optimizer = build_optimizer(model, self.cfg.optim, fused=use_fused_adamw(accelerator))
        return TrainingParts(model, optimizer, parts.on_device, parts.checkpointed)


@dataclass
class LabelledSetShape:
    """What `FinetuneTask.build` reads of a training set: its size (memory banks) and identity count (the head)."""

    size: int
    num_classes: int

    def __len__(self) -> int:
        return self.size


def build_finetune_step(
    encoder_name: str,
    batch: int,
    device: torch.device,
    plain: bool,
    *,
    classes: int = 1000,
    precision: Precision = "auto",
    seed: int = 0,
) -> TrainingStep:
    """One LAFS fine-tuning step of `FinetuneTask` with FinetuneConfig's defaults (or the plain-ViT reference):
    flips and mixup on the device, encoder forward on images (batch, 3, 112, 112) and landmarks (batch, K, 2),
    CosFace margin loss (no regulariser is on by default), backward, AdamW with layer-wise LR decay.
    """
    cfg = FinetuneConfig()
    cfg.encoder = dataclasses.replace(cfg.encoder, name=encoder_name)
    task = _PlainFinetuneTask(cfg) if plain else FinetuneTask(cfg)
    accelerator = make_accelerator(precision, device)
    torch.manual_seed(seed)
    parts = task.build(accelerator, LabelledSetShape(batch, classes))
    generator = torch.Generator().manual_seed(seed)
    info: dict[str, Any] = {"classes": classes, "head": cfg.head.name, "parameters": parameter_count(parts.model)}
    if not cfg.encoder.takes_landmarks:  # IResNet, timm: images only, at the encoder's input size
        encoder = build_any_encoder(cfg.encoder)
        size = tuple(encoder.pretrained_cfg["input_size"][-2:])
        images = torch.rand(batch, 3, *size, generator=generator) * 2 - 1
        landmarks: dict[str, torch.Tensor] = {}
        info |= {"width": int(encoder.num_features)}
    else:
        lafs_encoder = build_encoder(cfg.encoder)
        num_landmarks, patch = int(lafs_encoder.num_landmarks), int(lafs_encoder.patch_embed.patch_size[0])
        if plain:
            images = grid_images(batch, 1, num_landmarks, patch, seed)[:, 0]
        else:
            size = lafs_encoder.patch_embed.img_size
            images = torch.rand(batch, 3, *size, generator=generator) * 2 - 1
        landmarks = {"landmarks": jittered(lafs_encoder.template, (batch, num_landmarks, 2), generator)}
        info |= {"tokens": num_landmarks, "width": int(lafs_encoder.num_features), "depth": len(lafs_encoder.blocks)}
    loader_batch = {
        "image": ((images + 1) * 127.5).round().to(torch.uint8),  # the loader's uint8 pixels
        **landmarks,
        "label": torch.randint(0, classes, (batch,), generator=generator),
        "position": torch.arange(batch),
    }
    run = task_step(task, parts, loader_batch, accelerator, cfg.optim.epochs)
    info |= {
        "images": tuple(images.shape[-2:]),
        "precision": "bf16" if autocast_dtype(precision, device) is not None else "fp32",
    }
    return TrainingStep(run, [task.model], info)  # type: ignore[list-item]


# --------------------------------------------------------------------------------------------------- figures --


def _compare(
    command: str,
    name: str,
    candidate: TrainingStep,
    reference: TrainingStep,
    encoder: str,
    batch: int,
    repeats: int,
    warmup: int,
    dev: torch.device,
) -> dict[str, Any]:
    for key in ("width", "depth"):
        if candidate.info[key] != reference.info[key]:
            raise RuntimeError(f"{key}: LAFS {candidate.info[key]} != plain {reference.info[key]}")
    seconds, plain_seconds = time_side_by_side(candidate, reference, repeats, warmup, dev)
    figures = [figure(name, batch / seconds, batch / plain_seconds, "images/s", 0.9, higher_is_better=True)]
    return result(command, encoder, batch, repeats, warmup, dev, figures, lafs=candidate.info, plain_vit=reference.info)


def bench_pretrain_step(
    encoder: str = DEFAULT_ENCODER,
    batch: int = 32,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "auto",
    num_local: int = 8,
    local_landmarks: int = 36,
    out_dim: int = 4096,
    precision: Precision = "auto",
) -> dict[str, Any]:
    """Images/s of a LAFS pretraining step vs the same step with a plain timm ViT on grid images of K and k tokens."""
    dev = resolve_device(device)
    options = {"num_local": num_local, "local_landmarks": local_landmarks, "out_dim": out_dim, "precision": precision}
    lafs = build_pretrain_step(encoder, batch, dev, plain=False, **options)  # type: ignore[arg-type]
    plain = build_pretrain_step(encoder, batch, dev, plain=True, **options)  # type: ignore[arg-type]
    args = (encoder, batch, repeats, warmup, dev)
    return _compare("pretrain-step", "pretrain_step_vs_plain_vit", lafs, plain, *args)


def bench_finetune_step(
    encoder: str = DEFAULT_ENCODER,
    batch: int = 32,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "auto",
    classes: int = 1000,
    precision: Precision = "auto",
) -> dict[str, Any]:
    """Images/s of a LAFS fine-tuning step vs the same step with a plain timm ViT on grid images of K tokens."""
    dev = resolve_device(device)
    lafs = build_finetune_step(encoder, batch, dev, plain=False, classes=classes, precision=precision)
    plain = build_finetune_step(encoder, batch, dev, plain=True, classes=classes, precision=precision)
    return _compare("finetune-step", "finetune_step_vs_plain_vit", lafs, plain, encoder, batch, repeats, warmup, dev)
