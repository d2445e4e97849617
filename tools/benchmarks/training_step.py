"""Training-step figures: a full LAFS pretraining / fine-tuning step against a plain timm ViT doing the same step.

The reference is timm's `VisionTransformer` of the same width, depth, heads and MLP ratio, on grid images whose
8-pixel patches give the same token counts (K for globals and fine-tuning, k for local views), with the same DINO
head and loss, margin head, optimiser, clipping and EMA. The ratio is therefore the cost of landmark tokens (the
grid_sample tokenizer and id-indexed positions) over grid tokens. Inputs are made once on the device: the step only,
no data pipeline.

The step builders (`build_pretrain_step`, `build_finetune_step`) are importable so `tools.benchmarks.gpu` can count
their FLOPs and time them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from lafs.errors import ConfigError
from lafs.models.vit import LandmarkViT
from tools.benchmarks.common import DEFAULT_ENCODER, figure, resolve_device, result, time_side_by_side

Precision = Literal["auto", "fp32", "bf16"]
# Pretraining constants of one steady-state step (lafs/pretrain.py defaults after warm-up).
TEACHER_TEMP = 0.04
TEACHER_MOMENTUM = 0.996
LANDMARK_JITTER = 5.0  # pixels, ViewConfig.jitter_std: landmarks off the template as real views carry them


# ------------------------------------------------------------------------------------------------ shared pieces --


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """bfloat16 for ``bf16`` (``auto``: on CUDA only); None means float32 without autocast."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"--precision must be auto, fp32 or bf16, got {precision}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def grid_shape(tokens: int) -> tuple[int, int]:
    """(rows, columns) with rows * columns = tokens, as square as possible (rows <= columns)."""
    rows = max(d for d in range(1, math.isqrt(tokens) + 1) if tokens % d == 0)
    return rows, tokens // rows


class PlainViT(VisionTransformer):
    """timm's grid-patch ViT with LandmarkViT's call signature: landmarks and ids are accepted and ignored.

    Built with ``dynamic_img_size=True`` so one model takes the global grid and the smaller local grids (the position
    table is resampled for the latter, as timm does).
    """

    def forward(  # type: ignore[override]
        self, images: torch.Tensor, landmarks: torch.Tensor | None = None, landmark_ids: torch.Tensor | None = None
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
    block = model.blocks[0]
    plain = PlainViT(
        img_size=(patch * rows, patch * columns),
        patch_size=patch,
        embed_dim=int(model.embed_dim),
        depth=len(model.blocks),
        num_heads=int(block.attn.num_heads),
        mlp_ratio=block.mlp.fc1.out_features / model.embed_dim,
        num_classes=0,
        dynamic_img_size=True,
        drop_path_rate=drop_path_rate,
    )
    same = (plain.embed_dim, len(plain.blocks), plain.blocks[0].attn.num_heads, plain.patch_embed.num_patches)
    wanted = (model.embed_dim, len(model.blocks), block.attn.num_heads, model.num_landmarks)
    if same != wanted:  # a silent mismatch would make the ratio meaningless
        raise RuntimeError(f"plain ViT (width, depth, heads, tokens) {same} != landmark ViT {wanted}")
    return plain


def grid_images(batch: int, views: int, tokens: int, patch: int, device: torch.device, seed: int) -> torch.Tensor:
    """Normalised random images (batch, views, 3, patch * rows, patch * columns) whose grid has ``tokens`` patches."""
    rows, columns = grid_shape(tokens)
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, views, 3, patch * rows, patch * columns, generator=generator) * 2 - 1).to(device)


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


def adamw(params: Any, lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused on CUDA (one kernel for all parameters instead of a loop)."""
    return torch.optim.AdamW(params, lr=lr, fused=device.type == "cuda")


# ---------------------------------------------------------------------------------------------------- pretrain --


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
    """One LAFS pretraining step (or the plain-ViT reference): student over 2 globals + ``num_local`` locals, teacher
    over the globals without gradients, DINO loss, backward, clip at 3, AdamW, EMA of the teacher.

    LAFS inputs: images (batch, views, 3, 112, 112), landmarks (batch, views, K or k, 2), local ids (batch, locals,
    k). Plain inputs: grid images with K (globals) and k (locals) patches; the landmark tensors are passed and ignored.
    """
    import dataclasses

    from lafs.dino import DINOHead, DINOLoss, ema_update
    from lafs.models.multiview import MultiViewEncoder
    from lafs.pretrain import DinoConfig, OptimConfig, PretrainConfig, build_models, optimizer_groups

    cfg = PretrainConfig(dino=DinoConfig(out_dim=out_dim))
    cfg.encoder = dataclasses.replace(cfg.encoder, name=encoder_name)
    torch.manual_seed(seed)
    student, teacher = build_models(cfg)
    lafs_params = parameter_count(student)
    backbone = student.backbone
    num_landmarks, patch = int(backbone.num_landmarks), int(backbone.patch_embed.patch_size[0])
    if plain:  # the same construction as build_models, with grid tokens
        d = cfg.dino

        def multiview(drop_path_rate: float) -> MultiViewEncoder:
            head = DINOHead(
                int(backbone.embed_dim), d.out_dim, d.hidden_dim, d.bottleneck_dim, norm_last_layer=d.norm_last_layer
            )
            return MultiViewEncoder(plain_vit_like(backbone, drop_path_rate), head)  # type: ignore[arg-type]

        torch.manual_seed(seed)
        student = multiview(cfg.encoder.drop_path_rate)
        teacher = multiview(0.0)
        teacher.load_state_dict(student.state_dict())
        teacher.requires_grad_(False)
    student.to(device).train()
    teacher.to(device).train()  # the teacher has no dropout or drop-path; train() as in lafs/pretrain.py
    optim: OptimConfig = cfg.optim
    optimizer = adamw(optimizer_groups(student, optim.weight_decay), optim.lr, device)
    dino_loss = DINOLoss(out_dim, cfg.dino.student_temp, cfg.dino.center_momentum).to(device)

    generator = torch.Generator().manual_seed(seed)
    template = backbone.template
    ids_shape = (batch, num_local, local_landmarks)
    local_ids = torch.randint(0, num_landmarks, ids_shape, generator=generator)
    if plain:
        global_images = grid_images(batch, 2, num_landmarks, patch, device, seed)
        local_images = grid_images(batch, num_local, local_landmarks, patch, device, seed + 1)
    else:
        size = backbone.patch_embed.img_size
        global_images = (torch.rand(batch, 2, 3, *size, generator=generator) * 2 - 1).to(device)
        local_images = (torch.rand(batch, num_local, 3, *size, generator=generator) * 2 - 1).to(device)
    globals_ = {
        "global_images": global_images,
        "global_landmarks": jittered(template, (batch, 2, num_landmarks, 2), generator).to(device),
    }
    locals_ = {
        "local_images": local_images,
        "local_landmarks": (
            template.cpu()[local_ids] + LANDMARK_JITTER * torch.randn(*ids_shape, 2, generator=generator)
        ).to(device),
        "local_ids": local_ids.to(device),
    }
    num_views = 2 + num_local
    dtype = autocast_dtype(precision, device)
    clip = optim.clip_grad

    def run() -> None:
        with _autocast(device, dtype):
            student_out = student(**globals_, **locals_)
            with torch.no_grad():
                teacher_out = teacher(**globals_)
        losses = dino_loss(student_out.float(), teacher_out.float(), TEACHER_TEMP, num_views)
        losses["loss"].backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(student.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_update(teacher, student, TEACHER_MOMENTUM)

    info = {
        "global_tokens": num_landmarks,
        "local_tokens": local_landmarks,
        "num_local": num_local,
        "out_dim": out_dim,
        "width": int(backbone.embed_dim),
        "depth": len(backbone.blocks),
        "parameters": parameter_count(student),
        "lafs_parameters": lafs_params,
        "images": tuple(global_images.shape[-2:]),
        "local_images": tuple(local_images.shape[-2:]),
        "precision": "bf16" if dtype is not None else "fp32",
    }
    return TrainingStep(run, [student, teacher], info)


# ---------------------------------------------------------------------------------------------------- finetune --


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
    """One LAFS fine-tuning step (or the plain-ViT reference) with FinetuneConfig's defaults: encoder forward on
    images (batch, 3, 112, 112) and landmarks (batch, K, 2), CosFace margin loss (no regulariser is on by default),
    backward, clipping only if the config asks (LAFS: no), AdamW with layer-wise LR decay.
    """
    import dataclasses

    from finetune.heads import build_head
    from finetune.model import FinetuneModel
    from finetune.objective import build_objective
    from finetune.train import FinetuneConfig, build_optimizer
    from lafs.models import build_encoder

    cfg = FinetuneConfig()
    cfg.encoder = dataclasses.replace(cfg.encoder, name=encoder_name)
    torch.manual_seed(seed)
    lafs_encoder = build_encoder(cfg.encoder)
    encoder: nn.Module = plain_vit_like(lafs_encoder, cfg.encoder.drop_path_rate) if plain else lafs_encoder
    width = int(lafs_encoder.num_features)
    head = build_head(cfg.head, classes, width)
    objective = build_objective(head, cfg.regularisers, num_classes=classes, embed_dim=width, num_samples=batch)
    model = FinetuneModel(encoder, objective).to(device).train()  # type: ignore[arg-type]
    o = cfg.optim
    optimizer = build_optimizer(model, o, fused=device.type == "cuda")

    generator = torch.Generator().manual_seed(seed)
    num_landmarks, patch = int(lafs_encoder.num_landmarks), int(lafs_encoder.patch_embed.patch_size[0])
    if plain:
        images = grid_images(batch, 1, num_landmarks, patch, device, seed)[:, 0]
    else:
        size = lafs_encoder.patch_embed.img_size
        images = (torch.rand(batch, 3, *size, generator=generator) * 2 - 1).to(device)
    landmarks = jittered(lafs_encoder.template, (batch, num_landmarks, 2), generator).to(device)
    labels = torch.randint(0, classes, (batch,), generator=generator).to(device)
    dtype = autocast_dtype(precision, device)

    def run() -> None:
        with _autocast(device, dtype):
            terms = model(images, labels, landmarks, epoch=0.0, step=0)
        terms["loss"].backward()
        if o.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        objective.update()

    info = {
        "tokens": num_landmarks,
        "classes": classes,
        "head": cfg.head.name,
        "width": width,
        "depth": len(lafs_encoder.blocks),
        "parameters": parameter_count(model),
        "images": tuple(images.shape[-2:]),
        "precision": "bf16" if dtype is not None else "fp32",
    }
    return TrainingStep(run, [model], info)


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
