"""The demo behind `make demo`: every stage that exists today, end to end on the embedded synthetic faces.

    python -m tools.demo [--config configs/demo.yaml] [key=value ...]

Today: draw synthetic identities with exact landmarks, build the landmark-token encoder, embed every face, and report
shapes and throughput. Stages that are not built yet are listed as such, never simulated.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from lafs.cli import entry_point
from lafs.config import parse_cli, save_config
from lafs.data.collate import collate_faces, normalize_images
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig
from lafs.errors import ConfigError
from lafs.models import EncoderConfig, build_encoder

NOT_BUILT_YET = ("LAFS pretraining", "fine-tuning", "verification evaluation", "export")


@dataclass
class DemoConfig:
    output_dir: Path = Path("runs/demo")  # resolved config, contact sheet and embeddings land here
    data: SyntheticFacesConfig = field(
        # 32 x 8 faces keep the demo to seconds on two cores while still showing many identities.
        default_factory=lambda: SyntheticFacesConfig(
            num_identities=32, images_per_identity=8, landmark_set="mediapipe49"
        )
    )
    # 49 landmarks: the small set, so the nano encoder embeds hundreds of faces per second on a laptop CPU.
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(landmark_set="mediapipe49"))
    batch_size: int = 64  # large enough to amortise per-batch overhead on CPU
    seed: int = 0  # weight initialisation

    def validate(self) -> None:
        if self.encoder.landmark_set != self.data.landmark_set:
            raise ConfigError(
                f"encoder.landmark_set '{self.encoder.landmark_set}' must equal data.landmark_set "
                f"'{self.data.landmark_set}': the encoder embeds the landmarks the data carries"
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


def contact_sheet(faces: SyntheticFaces, identities: int = 8, per_identity: int = 6, scale: int = 2) -> np.ndarray:
    """Grid (RGB) of the first faces, one identity per row, landmarks drawn as dots."""
    rows = []
    shown = min(per_identity, faces.cfg.images_per_identity)
    for identity in range(min(identities, faces.cfg.num_identities)):
        row = []
        for image_number in range(shown):
            item = faces[identity * faces.cfg.images_per_identity + image_number]
            tile = cv2.resize(item["image"], None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
            for x, y in item["landmarks"] * scale:
                # OpenCV puts pixel centres on integers; ours are at j + 0.5.
                cv2.circle(tile, (round(x - 0.5), round(y - 0.5)), 1, (0, 255, 0), -1)
            row.append(tile)
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def generate(faces: SyntheticFaces) -> tuple[list[dict], float]:
    start = time.perf_counter()
    items = [faces[i] for i in range(len(faces))]
    return items, len(items) / (time.perf_counter() - start)


@torch.no_grad()
def embed(model: torch.nn.Module, items: list[dict], batch_size: int) -> tuple[np.ndarray, float]:
    """Embeddings (N, dim) of every face with its own landmarks, and the images/s reached (after one warm-up)."""
    batches = [collate_faces(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    model(normalize_images(batches[0]["image"]), batches[0]["landmarks"])  # warm-up: allocator and kernels
    start = time.perf_counter()
    out = [model(normalize_images(b["image"]), b["landmarks"]) for b in batches]
    return torch.cat(out).numpy(), len(items) / (time.perf_counter() - start)


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_cli(argv, DemoConfig, default_config="configs/demo.yaml", description=__doc__.split("\n\n")[0])
    run_dir = cfg.output_dir
    save_config(cfg, run_dir)
    torch.manual_seed(cfg.seed)

    faces = SyntheticFaces(cfg.data)
    items, faces_per_second = generate(faces)
    model = build_encoder(cfg.encoder).eval()
    sample = collate_faces(items[:2])
    tokens = model.forward_features(normalize_images(sample["image"]), sample["landmarks"])
    embeddings, embed_per_second = embed(model, items, cfg.batch_size)

    cv2.imwrite(str(run_dir / "faces.png"), cv2.cvtColor(contact_sheet(faces), cv2.COLOR_RGB2BGR))
    np.save(run_dir / "embeddings.npy", embeddings)
    np.save(run_dir / "labels.npy", np.array([item["label"] for item in items]))

    size = cfg.data.image_size
    params = sum(p.numel() for p in model.parameters()) / 1e6
    rows = [
        (
            "synthetic faces",
            f"{len(faces)} images of {faces.num_classes} identities, {size}x{size}, "
            f"{faces.landmark_set.num_landmarks} exact landmarks each",
            f"{faces_per_second:,.0f} img/s (1 process)",
        ),
        ("encoder", f"{cfg.encoder.name}, {params:.2f} M params, tokens {tuple(tokens.shape)} (CLS + landmarks)", ""),
        (
            "embed",
            f"embeddings {embeddings.shape}, untrained weights",
            f"{embed_per_second:,.0f} img/s (batch {cfg.batch_size}, {torch.get_num_threads()} threads, CPU)",
        ),
        *((stage, "not built yet", "") for stage in NOT_BUILT_YET),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"lafs demo -> {run_dir}/ (config.yaml, faces.png, embeddings.npy, labels.npy)")
    for stage, what, speed in rows:
        print(f"  {stage:<{width}}  {what}" + (f"  [{speed}]" if speed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
