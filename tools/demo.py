"""The demo behind `make demo`: every stage that exists today, end to end on the embedded synthetic faces.

    python -m tools.demo [--config configs/demo.yaml] [key=value ...]

Draws synthetic identities with exact landmarks, pretrains the nano landmark-token encoder with LAFS (DINO over
landmark views), embeds every face with the pretrained encoder, verifies held-out identities with the untrained and
the pretrained encoder (report.json, report.md, roc.png), fine-tunes few-shot on other synthetic identities twice
with the same budget (from the pretrained encoder and from scratch) and verifies both, and exports the pretrained
encoder (safetensors + two ONNX forms, parity-checked).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from finetune.task import FINETUNE
from lafs.cli import entry_point
from lafs.config import parse_cli, save_config
from lafs.data.collate import collate_faces, normalize_images
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig, synthetic_pairs
from lafs.engine import Stage
from lafs.engine.run_log import read_log
from lafs.errors import ConfigError
from lafs.evaluation import evaluate_pairs
from lafs.evaluation.report import build_report, encoder_info, evaluate_sets, format_table, write_report
from lafs.export import load_encoder, save_encoder_onnx
from lafs.models import EncoderConfig, build_encoder
from lafs.tasks.pretrain import PRETRAIN


@dataclass
class DemoConfig:
    output_dir: Path = Path("runs/demo")  # config, contact sheet, embeddings and the pretraining run land here
    data: SyntheticFacesConfig = field(
        # 32 x 8 faces keep the embedding stage to seconds on two cores while still showing many identities.
        default_factory=lambda: SyntheticFacesConfig(
            num_identities=32, images_per_identity=8, landmark_set="mediapipe49"
        )
    )
    # 49 landmarks: the small set, so the nano encoder trains and embeds quickly on a laptop CPU.
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(landmark_set="mediapipe49"))
    pretrain_config: Path = Path("configs/pretrain/demo.yaml")  # the pretraining run (its own synthetic faces)
    pretrain_overrides: list[str] = field(default_factory=list)  # key=value overrides for that run
    finetune_config: Path = Path("configs/finetune/demo.yaml")  # the few-shot fine-tuning runs (their own faces)
    finetune_overrides: list[str] = field(default_factory=list)  # key=value overrides for both fine-tuning runs
    verify_identities: int = 50  # held-out identities (another seed) for the verification check
    verify_pairs: int = 400  # pairs drawn from them, half same, half different
    batch_size: int = 64  # large enough to amortise per-batch overhead on CPU
    seed: int = 0  # weight initialisation of the untrained reference encoder

    def validate(self) -> None:
        self.encoder.require_landmark_set(self.data.landmark_set)
        if self.batch_size < 1 or self.verify_pairs < 2 or self.verify_identities < 2:
            raise ConfigError("batch_size must be >= 1, verify_pairs and verify_identities >= 2")


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
    model.eval()
    batches = [collate_faces(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    model(normalize_images(batches[0]["image"]), batches[0]["landmarks"])  # warm-up: allocator and kernels
    start = time.perf_counter()
    out = [model(normalize_images(b["image"]), b["landmarks"]) for b in batches]
    return torch.cat(out).numpy(), len(items) / (time.perf_counter() - start)


def run_stage(stage: Stage[Any], config: Path, overrides: list[str], run_dir: Path) -> float:
    """Train ``stage`` as the YAML ``config`` + ``overrides`` say into ``run_dir`` (a finished run resumes and stops
    at once); its wall time."""
    start = time.perf_counter()
    stage.run(config, [*overrides, f"output_dir={run_dir}"])
    return time.perf_counter() - start


def loss_summary(run_dir: Path, seconds: float, name: str = "DINO loss", term: str = "loss") -> str:
    log = [r for r in read_log(run_dir) if term in r]
    if not log:
        return "no steps logged"
    head, tail = log[: max(1, len(log) // 4)], log[-max(1, len(log) // 4) :]
    first, last = np.mean([r[term] for r in head]), np.mean([r[term] for r in tail])
    quarters = "(first / last quarter of the log)"
    return f"{log[-1]['step']} steps, {name} {first:.3f} -> {last:.3f} {quarters}, {seconds:.0f} s"


def held_out_pairs(cfg: DemoConfig) -> tuple[list[np.ndarray], np.ndarray]:
    """Verification pairs of synthetic identities neither pretraining nor fine-tuning sees."""
    held_out = SyntheticFaces(
        SyntheticFacesConfig(
            num_identities=cfg.verify_identities,
            images_per_identity=4,
            landmark_set=cfg.data.landmark_set,
            seed=cfg.data.seed + 1,
        )
    )
    return synthetic_pairs(held_out, cfg.verify_pairs, seed=cfg.seed)


def fine_tune_both(
    cfg: DemoConfig, pretrain_dir: Path, images: list[np.ndarray], issame: np.ndarray
) -> dict[str, tuple[Path, float, float]]:
    """Few-shot fine-tuning from the LAFS-pretrained encoder and from scratch, on identities neither pretraining nor
    the held-out pairs use: {name: (run directory, seconds, accuracy on the held-out pairs)}."""
    finetuned = {}
    for name, init in (("pretrained", pretrain_dir), ("scratch", "''")):
        finetune_dir = cfg.output_dir / f"finetune_{name}"
        overrides = [f"init={init}", *cfg.finetune_overrides]
        seconds = run_stage(FINETUNE, cfg.finetune_config, overrides, finetune_dir)
        encoder = load_encoder(finetune_dir / "encoder")
        accuracy = evaluate_pairs(encoder, images, issame, batch_size=cfg.batch_size)["accuracy"]
        finetuned[name] = (finetune_dir, seconds, accuracy)
    return finetuned


@dataclass
class DemoResults:
    """What the demo measured, for its closing table."""

    faces: SyntheticFaces
    faces_per_second: float
    pretrain_dir: Path
    pretrain_seconds: float
    finetuned: dict[str, tuple[Path, float, float]]
    architecture: str
    embeddings_shape: tuple[int, ...]
    embed_per_second: float
    before: dict[str, float]
    after: dict[str, float]
    onnx: dict[str, dict[str, float]]


def summary_rows(cfg: DemoConfig, r: DemoResults) -> list[tuple[str, str, str]]:
    """(stage, what it did, note) per line of the demo's closing table."""
    size = cfg.data.image_size
    return [
        (
            "synthetic faces",
            f"{len(r.faces)} images of {r.faces.num_classes} identities, {size}x{size}, "
            f"{r.faces.landmark_set.num_landmarks} exact landmarks each",
            f"{r.faces_per_second:,.0f} img/s, 1 process",
        ),
        ("LAFS pretraining", loss_summary(r.pretrain_dir, r.pretrain_seconds), f"run: {r.pretrain_dir}"),
        *(
            (f"fine-tune ({name})", loss_summary(path, seconds, "margin loss", "margin_loss"), f"run: {path}")
            for name, (path, seconds, _) in r.finetuned.items()
        ),
        (
            "embed",
            f"{r.architecture} (pretrained teacher) -> embeddings {r.embeddings_shape}",
            f"{r.embed_per_second:,.0f} img/s, batch {cfg.batch_size}, {torch.get_num_threads()} threads, CPU",
        ),
        (
            "verification",
            f"{cfg.verify_pairs} pairs of {cfg.verify_identities} held-out identities, 10-fold, flip: "
            f"accuracy {r.before['accuracy']:.3f} untrained -> {r.after['accuracy']:.3f} pretrained "
            f"(AUC {r.before['auc']:.3f} -> {r.after['auc']:.3f})",
            "",
        ),
        (
            "few-shot verification",
            f"same pairs after fine-tuning with the same budget: accuracy {r.finetuned['scratch'][2]:.3f} from "
            f"scratch -> {r.finetuned['pretrained'][2]:.3f} from the LAFS-pretrained encoder",
            "",
        ),
        *(
            (
                "export",
                f"{name}: min cosine {e['min_cosine']:.6f} vs PyTorch, dynamic batch",
                f"{e['pytorch_ms_per_image']:.1f} ms/img PyTorch, {e['onnx_ms_per_image']:.1f} ms/img onnxruntime",
            )
            for name, e in r.onnx.items()
        ),
    ]


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_cli(argv, DemoConfig, default_config="configs/demo.yaml", description=__doc__.split("\n\n")[0])
    run_dir = cfg.output_dir
    save_config(cfg, run_dir)

    faces = SyntheticFaces(cfg.data)
    items, faces_per_second = generate(faces)
    cv2.imwrite(str(run_dir / "faces.png"), cv2.cvtColor(contact_sheet(faces), cv2.COLOR_RGB2BGR))

    pretrain_dir = run_dir / "pretrain"
    pretrain_seconds = run_stage(PRETRAIN, cfg.pretrain_config, cfg.pretrain_overrides, pretrain_dir)
    pretrained = load_encoder(pretrain_dir / "encoder").eval()
    embeddings, embed_per_second = embed(pretrained, items, cfg.batch_size)
    np.save(run_dir / "embeddings.npy", embeddings)
    np.save(run_dir / "labels.npy", np.array([item["label"] for item in items]))

    images, issame = held_out_pairs(cfg)
    torch.manual_seed(cfg.seed)
    before = evaluate_pairs(build_encoder(cfg.encoder), images, issame, batch_size=cfg.batch_size)
    sets = evaluate_sets(pretrained, {"synthetic_held_out": (images, issame)}, batch_size=cfg.batch_size)
    report = build_report(encoder_info(pretrain_dir), sets, flip=True)
    write_report(report, run_dir / "evaluation")

    finetuned = fine_tune_both(cfg, pretrain_dir, images, issame)
    sample = collate_faces(items[:8])
    onnx = save_encoder_onnx(
        pretrained,
        run_dir / "export",
        normalize_images(sample["image"]),
        sample["landmarks"],
        source={"stage": "demo", "run_dir": str(pretrain_dir)},
    )

    results = DemoResults(
        faces, faces_per_second, pretrain_dir, pretrain_seconds, finetuned,
        pretrained.pretrained_cfg["architecture"], embeddings.shape, embed_per_second,
        before, sets["synthetic_held_out"], onnx,
    )  # fmt: skip
    rows = summary_rows(cfg, results)
    width = max(len(row[0]) for row in rows)
    print(f"\nlafs demo -> {run_dir}/ (faces.png, embeddings.npy, pretrain/, finetune_*/, evaluation/, export/)")
    for stage, what, note in rows:
        print(f"  {stage:<{width}}  {what}" + (f"  [{note}]" if note else ""))
    print(f"\nevaluation report ({run_dir / 'evaluation'}/report.md):\n{format_table(report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
