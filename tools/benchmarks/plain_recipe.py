"""The reference the CPU recipe must beat: a plain-PyTorch face recogniser trained for a fixed wall-clock budget.

    python -m tools.benchmarks.plain_recipe --data train.csv --bin held_aside_ff.bin [--bin ...] --output OUT.json
        [--model resnet18] [--image-size 112] [--minutes 15] [--batch 64] [--lr 0.1] [--seed 0]

Deliberately independent of the project's training code (its own twenty-line loop, on purpose the only one outside
the engine): a timm model with a 512-d embedding (``num_classes=512``), an ArcFace head written out here (s = 64,
m = 0.5, insightface's "easy margin" off), momentum SGD with a cosine rate over the budget, horizontal flips, every
image decoded once. It stops when ``--minutes`` of wall time are spent and verifies the held-aside pairs with the
project's evaluation (the same 10-fold protocol and flip test-time augmentation as every report), so its figures
sit beside the recipe's. Writes OUT.json: accuracies, images/s, epochs done.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from lafs.cli import entry_point, int_in_range
from lafs.data.collate import normalize_images
from lafs.data.open import open_dataset
from lafs.data.pairs import load_bin
from lafs.evaluation.verification import evaluate_pairs
from lafs.files import write_atomic


class ArcFace(nn.Module):
    """logits (B, C) = s * cos(theta + m) at the label, s * cos(theta) elsewhere, for embeddings (B, d)."""

    def __init__(self, dim: int, classes: int, scale: float = 64.0, margin: float = 0.5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.scale, self.margin = scale, margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(embeddings), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        target = torch.cos(torch.acos(cosine.gather(1, labels[:, None])) + self.margin)
        return self.scale * cosine.scatter(1, labels[:, None], target)


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.benchmarks.plain_recipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--data", required=True, help="training faces: folder, list file or .rec")
    parser.add_argument("--bin", type=Path, action="append", required=True, help="held-aside pair set(s)")
    parser.add_argument("--output", type=Path, required=True, help="JSON results")
    parser.add_argument("--model", default="resnet18", help="timm model (default resnet18)")
    parser.add_argument("--image-size", type=int_in_range(16), default=112)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--batch", type=int_in_range(2), default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int_in_range(0), default=0)
    parser.add_argument("--threads", type=int_in_range(1), default=2)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    faces = open_dataset(args.data, image_size=args.image_size, landmarks="none", in_memory=True)
    images = torch.from_numpy(faces.images).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S) uint8
    labels = torch.from_numpy(faces.label_of)
    model = timm.create_model(args.model, pretrained=False, num_classes=512)
    head = ArcFace(512, faces.num_classes)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=5e-4)
    budget, start, seen, step = args.minutes * 60.0, time.perf_counter(), 0, 0
    model.train()
    while (elapsed := time.perf_counter() - start) < budget:
        for group in optimizer.param_groups:  # cosine over the wall-clock budget
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        batch = torch.from_numpy(rng.choice(len(images), args.batch, replace=False))
        x = normalize_images(images[batch])
        flip = torch.rand(len(x)) < 0.5
        x[flip] = x[flip].flip(-1)
        loss = F.cross_entropy(head(model(x), labels[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen, step = seen + args.batch, step + 1
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f} {seen / elapsed:.1f} img/s", flush=True)
    train_seconds = time.perf_counter() - start
    result: dict[str, object] = {
        "model": args.model, "image_size": args.image_size, "minutes": args.minutes, "seed": args.seed,
        "steps": step, "epochs": seen / len(images), "images_per_second": seen / train_seconds,
    }  # fmt: skip
    for path in args.bin:
        pairs, issame = load_bin(path, args.image_size)
        report = evaluate_pairs(model, pairs, issame, batch_size=256)
        result[f"{path.stem}_accuracy"] = report["accuracy"]
        result[f"{path.stem}_accuracy_std"] = report["accuracy_std"]
        result[f"{path.stem}_auc"] = report["auc"]
    write_atomic(args.output, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
