"""The CPU recipe's training step against a plain timm model of the same FLOPs, side by side.

The candidate is one optimiser step of `FinetuneTask` with ``configs/cpu/finetune.yaml`` (its encoder, input size,
margin head, device augmentation and optimiser) as the engine runs it; the reference is the plain-PyTorch step of
`tools.benchmarks.plain_recipe`: the same timm backbone with a 512-d output, an ArcFace head, flips, momentum SGD.
Both take the same uint8 batch already in memory (the recipe decodes once), so the ratio is what the framework
costs per step over a hand-written loop: its embedding neck, augmentation and bookkeeping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F

from finetune.task import FinetuneConfig, FinetuneTask
from lafs.config import load_config
from lafs.data.collate import normalize_images
from tools.benchmarks.common import figure, resolve_device, result, time_side_by_side
from tools.benchmarks.plain_recipe import ArcFace
from tools.benchmarks.training_step import LabelledSetShape, make_accelerator, task_step

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "cpu" / "finetune.yaml"


def bench_recipe_step(
    encoder: str = "",
    batch: int = 64,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "auto",
    classes: int = 249,
) -> dict[str, Any]:
    """Images/s of the recipe's step / the plain step (target >= 0.9); ``encoder`` "" keeps the recipe's."""
    dev = resolve_device(device)
    cfg = load_config(FinetuneConfig, RECIPE, [f"encoder.name={encoder}"] if encoder else [])
    size = cfg.data.image_size
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (batch, 3, size, size), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, classes, (batch,), generator=generator)

    task = FinetuneTask(cfg)
    accelerator = make_accelerator("fp32", dev)
    torch.manual_seed(0)
    parts = task.build(accelerator, LabelledSetShape(batch, classes))
    candidate = task_step(task, parts, {"image": pixels, "label": labels, "position": torch.arange(batch)},
                          accelerator, cfg.optim.epochs)  # fmt: skip

    backbone = cfg.encoder.name.removeprefix("timm:")
    model = timm.create_model(backbone, pretrained=False, num_classes=512).to(dev)
    head = ArcFace(512, classes).to(dev)
    optimizer = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.01, momentum=0.9, weight_decay=5e-4)
    plain_pixels, plain_labels = pixels.to(dev), labels.to(dev)

    def reference() -> None:
        images = normalize_images(plain_pixels)
        flip = torch.rand(batch, device=dev) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        loss = F.cross_entropy(head(model(images), plain_labels), plain_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    seconds, plain_seconds = time_side_by_side(candidate, reference, repeats, warmup, dev)
    figures = [figure("recipe_step_vs_plain_timm", batch / seconds, batch / plain_seconds, "images/s", 0.9,
                      higher_is_better=True)]  # fmt: skip
    info = {"config": str(RECIPE.relative_to(RECIPE.parents[2])), "encoder": cfg.encoder.name, "image_size": size,
            "classes": classes, "augment": "flip, crop, colour jitter", "head": cfg.head.name}  # fmt: skip
    plain = {"model": f"timm {backbone}, num_classes=512", "head": "arcface", "augment": "flip"}
    return result("recipe-step", cfg.encoder.name, batch, repeats, warmup, dev, figures, recipe=info, plain=plain)
