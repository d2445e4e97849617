"""The few-shot protocol as a function: prepare the split, pretrain each arm, fine-tune few-shot, verify unseen people.

    records = run_protocol(FewShotConfig(input=..., output=...))

For every seed: identities are split into seen / unseen (`lafs.fewshot.split`), each arm pretrains on the seen
images without labels (``lafs``: landmark views; ``dino``: DINO's ordinary views on the regular patch grid;
``none``: no pretraining), each pretrained encoder is fine-tuned on ``shots`` images per seen identity with each
regulariser, and every encoder (also the pretrained ones, before fine-tuning: ``shots = 0``) is verified on pairs of
unseen identities. Every arm gets the same step budgets; schedules are relative to the run
(``optim.schedules=relative``), so the papers' epoch schedules shrink with it. Every stage resumes: a finished stage
is skipped, an interrupted one continues from its last checkpoint.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from finetune.task import FINETUNE, FinetuneConfig
from lafs.config import load_config
from lafs.data.align_photos import Tally, find_photos, write_folder
from lafs.data.folder import few_shot_indices, scan_image_folder, write_list_file
from lafs.data.images import read_image_file
from lafs.data.pairs import write_bin
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig
from lafs.engine import Stage
from lafs.errors import ConfigError
from lafs.export import load_encoder_and_predictor
from lafs.fewshot.split import (
    IdentitySplit,
    fixed_split,
    relabel,
    split_identities,
    subset_cache,
    verification_pairs,
)
from lafs.files import read_json, write_atomic
from lafs.landmarks.cache import CacheInfo, LandmarkCache
from lafs.landmarks.extract import extract_landmarks
from lafs.landmarks.sets import get_landmark_set
from lafs.models import EncoderConfig, build_encoder
from lafs.tasks.pretrain import PRETRAIN, PretrainConfig

logger = logging.getLogger("lafs.fewshot")

ARMS = ("lafs", "dino", "none")  # LAFS landmark views, DINO patch views, no pretraining
REGULARISERS = ("none", "unpg", "coreface", "intraloss", "cluster", "landmark")  # "none": the margin head alone
GRID_SET = "grid196"  # the regular 14 x 14 grid of 8 x 8 patches: the DINO arm's tokens
DONE = "fewshot_stage.json"  # written in a stage's folder when it has finished
SYNTHETIC = "synthetic"  # the input that names the built-in synthetic faces
SYNTHETIC_SEED = 7  # identities no other demo or test draws


@dataclass
class FewShotConfig:
    input: Path  # identity folder (<identity>/<image>): aligned 112 x 112 crops, or photos with align=True
    output: Path  # everything lands here; running the same command again resumes
    align: bool = False  # align the photos to the ArcFace crop first (tools.align)
    unseen: int = 5  # identities held out for verification
    # A fixed split instead (the held_aside_identities of tools.make_bin --split's split.json): the same unseen
    # people for every seed, and the same pairs; seeds then vary the pretraining, the shots and the initialisation.
    held_aside: list[str] = field(default_factory=list)
    shots: Sequence[int] = (5,)  # fine-tuning images per seen identity (several values: one run each)
    seeds: Sequence[int] = (0, 1, 2)  # each seed: its own split, pretraining, few-shot subset and initialisation
    arms: Sequence[str] = ARMS
    regularisers: Sequence[str] = ("none",)
    pretrain_steps: int = 600  # optimiser steps, the same for every arm
    finetune_steps: int = 300  # likewise
    encoder: str = "lafs_vit_nano_p8_112"
    synthetic_identities: int = 40  # with input "synthetic": the built-in faces, this many identities ...
    synthetic_images: int = 20  # ... of this many images each
    pairs: int = 600  # unseen verification pairs, half same, half different
    workers: int = 2  # processes for alignment and landmarks
    pretrain_config: Path = Path("configs/fewshot/pretrain.yaml")
    finetune_config: Path = Path("configs/fewshot/finetune.yaml")
    pretrain_overrides: list[str] = field(default_factory=list)  # key=value for every pretraining run
    finetune_overrides: list[str] = field(default_factory=list)  # key=value for every fine-tuning run
    # The lafs and none arms' tokens: MediaPipe landmarks of this set. Empty: the pretraining config's
    # encoder.landmark_set (mediapipe196, LAFS's K, for configs/fewshot; mediapipe49 for configs/cpu).
    landmark_set: str = ""

    def validate(self) -> None:
        for name, values, known in (("arms", self.arms, ARMS), ("regularisers", self.regularisers, REGULARISERS)):
            unknown = sorted(set(values) - set(known))
            if unknown or not values:
                raise ConfigError(f"--{name}: unknown {unknown[0]!r}" if unknown else f"--{name}: none given")
        if not self.shots or min(self.shots) < 1:
            raise ConfigError(f"--shots must be one or more integers >= 1, got {list(self.shots)}")
        if not self.seeds or min(self.seeds) < 0:
            raise ConfigError(f"--seeds must be one or more integers >= 0, got {list(self.seeds)}")
        for name in ("pretrain_steps", "finetune_steps", "pairs"):
            if getattr(self, name) < (0 if name == "pretrain_steps" else 2):
                raise ConfigError(f"--{name.replace('_', '-')} is too small: {getattr(self, name)}")
        for path in (self.pretrain_config, self.finetune_config):
            if not Path(path).is_file():
                raise ConfigError(f"no such config file {path}")
        if not self.landmark_set:
            pretraining = load_config(PretrainConfig, self.pretrain_config, self.pretrain_overrides)
            self.landmark_set = pretraining.encoder.landmark_set
        if get_landmark_set(self.landmark_set).mesh_points is None:
            raise ConfigError(f"landmark set {self.landmark_set} is a patch grid: the lafs arm needs MediaPipe points")


@dataclass
class SeedData:
    """One seed's split and the files the stages read."""

    seed: int
    split: IdentitySplit
    folder: Path
    seen_list: Path  # path,label list of the seen images (labels 0 .. S - 1)
    seen_landmarks: Path  # their MediaPipe landmark cache
    seen_labels: np.ndarray
    pairs_bin: Path  # unseen verification pairs
    landmark_set: str  # the MediaPipe set of the landmarks below and of the lafs and none arms' tokens
    pair_landmarks: np.ndarray  # (2P, K, 2) MediaPipe landmarks of the pair images (template where none was found)
    pair_found: np.ndarray  # (2P,) whether MediaPipe found the face


def _finished(folder: Path) -> dict[str, Any] | None:
    try:
        record = read_json(folder / DONE)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _mark_finished(folder: Path, record: dict[str, Any]) -> None:
    write_atomic(folder / DONE, json.dumps(record, indent=2) + "\n")


def prepare_faces(cfg: FewShotConfig) -> Path:
    """The aligned identity folder: the input itself, its photos aligned once into ``output/aligned``, or for
    ``input = "synthetic"`` the built-in synthetic faces written once into ``output/synthetic``."""
    if str(cfg.input) == SYNTHETIC:
        return write_synthetic_folder(cfg.output / SYNTHETIC, cfg.synthetic_identities, cfg.synthetic_images,
                                      cfg.landmark_set)  # fmt: skip
    if not cfg.align:
        return cfg.input
    aligned = cfg.output / "aligned"
    if not (aligned / "report.txt").is_file():
        photos = find_photos(cfg.input)
        tally = Tally(len(photos.paths))
        write_folder(aligned, photos, tally, cfg.input, cfg.workers)
        logger.info(f"aligned {tally.aligned} of {tally.photos} photos into {aligned}")
    return aligned


def exact_landmarks_file(folder: Path, landmark_set: str) -> Path:
    """Where a synthetic folder keeps its faces' exact landmarks of ``landmark_set``."""
    return folder / f"exact_landmarks-{landmark_set}.npy"


def write_synthetic_folder(folder: Path, identities: int, images: int, landmark_set: str) -> Path:
    """Synthetic faces as an identity folder of PNGs, with their exact landmarks of ``landmark_set`` in
    `exact_landmarks_file` (rows in the sorted order `scan_image_folder` lists the images)."""
    exact = exact_landmarks_file(folder, landmark_set)
    if exact.is_file():
        return folder
    faces = SyntheticFaces(SyntheticFacesConfig(num_identities=identities, images_per_identity=images,
                                                landmark_set=landmark_set, seed=SYNTHETIC_SEED))  # fmt: skip
    width = len(str(images))
    points = []
    for index in range(len(faces)):
        item = faces[index]
        label, number = divmod(index, images)
        path = folder / f"id{label:04d}" / f"{number:0{width}d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        _, png = cv2.imencode(".png", cv2.cvtColor(item["image"], cv2.COLOR_RGB2BGR))  # lossless
        write_atomic(path, png.tobytes())
        points.append(item["landmarks"])
    buffer = io.BytesIO()
    np.save(buffer, np.stack(points).astype(np.float32))
    write_atomic(exact, buffer.getvalue())  # last: it marks the folder complete
    return folder


def prepare_landmarks(cfg: FewShotConfig, faces: Path) -> tuple[list[Path], np.ndarray, list[str], LandmarkCache]:
    """Every image (sorted), its label and identity names, and their landmark cache (computed once): MediaPipe's on
    real faces, the exact ones on synthetic faces."""
    paths, labels, names = scan_image_folder(faces)
    all_list = write_list_file(cfg.output / "all_images.csv", paths, labels.tolist())
    exact = exact_landmarks_file(faces, cfg.landmark_set)
    folder = cfg.output / f"landmarks-{cfg.landmark_set}"
    if exact.is_file():
        points = np.load(exact)
        info = CacheInfo(str(all_list), len(points), cfg.landmark_set, 112, "synthetic faces (exact landmarks)")
        cache = LandmarkCache.create(folder, info)
        cache.write(np.arange(len(points)), points, np.ones(len(points), dtype=bool))
        cache.flush()
    else:
        report = extract_landmarks(all_list, folder, cfg.landmark_set, workers=cfg.workers, progress=False)
        cache = report.cache
    logger.info(f"landmarks: {cache.info.found} of {cache.info.num_images} faces found ({cache.info.detector})")
    return paths, labels, names, cache


def prepare_seed(
    cfg: FewShotConfig, seed: int, paths: list[Path], labels: np.ndarray, names: list[str], cache: LandmarkCache
) -> SeedData:
    """The seed's split, seen list + landmark cache, and unseen pair set (written once, reused on resume)."""
    folder = cfg.output / f"seed{seed}"
    fixed = bool(cfg.held_aside)
    split = fixed_split(labels, names, cfg.held_aside) if fixed else split_identities(labels, names, cfg.unseen, seed)
    seen = split.seen_positions
    seen_labels = relabel(labels[seen])
    seen_list = write_list_file(folder / "seen.csv", [paths[i] for i in seen], seen_labels.tolist())
    seen_landmarks = folder / "seen_landmarks"
    subset_cache(cache, seen, seen_landmarks)
    unseen = split.unseen_positions
    pairs = verification_pairs(labels[unseen], cfg.pairs, 0 if fixed else seed)
    order = np.array([unseen[i] for a, b, _ in pairs for i in (a, b)])
    pairs_bin = folder / "unseen_pairs.bin"
    if not pairs_bin.is_file():
        images = [read_image_file(paths[i]) for i in order]
        write_bin(pairs_bin, list(zip(images[::2], images[1::2], strict=True)), [same for _, _, same in pairs])
        summary = {"seed": seed, "seen": list(split.seen), "unseen": list(split.unseen), "pairs": len(pairs)}
        write_atomic(folder / "split.json", json.dumps(summary, indent=2) + "\n")
    return SeedData(
        seed, split, folder, seen_list, seen_landmarks, seen_labels, pairs_bin, cfg.landmark_set,
        np.asarray(cache.landmarks[order], dtype=np.float32), np.asarray(cache.found[order]),
    )  # fmt: skip


def _epochs(steps: int, images: int, batch: int) -> int:
    """Epochs whose whole batches give at least ``steps`` optimiser steps (one process, no accumulation)."""
    return max(1, math.ceil(steps / max(1, images // batch)))


def _token_keys(arm: str, data: SeedData) -> list[str]:
    """Where the arm's tokens come from: the DINO arm's regular grid, or MediaPipe's landmarks."""
    if arm == "dino":
        return [f"data.landmark_set={GRID_SET}", f"encoder.landmark_set={GRID_SET}", "data.landmarks=template"]
    return [f"data.landmark_set={data.landmark_set}", f"encoder.landmark_set={data.landmark_set}",
            f"data.landmarks={data.seen_landmarks}"]  # fmt: skip


def _common_keys(
    data: SeedData, arm: str, cfg: FewShotConfig, run_dir: Path, steps: int, images: int, batch: int
) -> list[str]:
    """What every stage of a seed and arm sets: where, on what, which encoder, and the step budget."""
    return [
        f"output_dir={run_dir}",
        f"data.path={data.seen_list}",
        *_token_keys(arm, data),
        f"encoder.name={cfg.encoder}",
        f"seed={data.seed}",
        f"optim.batch_size={batch}",
        f"optim.epochs={_epochs(steps, images, batch)}",
        f"max_steps={steps}",
        "optim.schedules=relative",
    ]


def _run_stage(stage: Stage[Any], config: Path, overrides: list[str], run_dir: Path, arm: str) -> Path:
    """Train one stage through the engine (a finished one is skipped) and mark it finished."""
    if _finished(run_dir):
        return run_dir
    start = time.perf_counter()
    stage.run(config, overrides)
    _mark_finished(run_dir, {"stage": stage.name, "arm": arm, "seconds": time.perf_counter() - start})
    return run_dir


def pretrain(cfg: FewShotConfig, data: SeedData, arm: str) -> Path:
    """Pretrain ``arm`` on the seen images without labels; returns its run directory."""
    run_dir = data.folder / f"pretrain_{arm}"
    base = load_config(PretrainConfig, cfg.pretrain_config, cfg.pretrain_overrides)
    images = len(data.seen_labels)
    batch = min(base.optim.batch_size, images)
    overrides = [*cfg.pretrain_overrides, *_common_keys(data, arm, cfg, run_dir, cfg.pretrain_steps, images, batch)]
    if arm == "dino":
        overrides.append("views.kind=patches")
    return _run_stage(PRETRAIN, cfg.pretrain_config, overrides, run_dir, arm)


def finetune(cfg: FewShotConfig, data: SeedData, arm: str, init: Path | None, shots: int, regulariser: str) -> Path:
    """Fine-tune on ``shots`` images per seen identity with ``regulariser``; returns the run directory."""
    run_dir = data.folder / f"finetune_{arm}_{shots}shot_{regulariser}"
    base = load_config(FinetuneConfig, cfg.finetune_config, cfg.finetune_overrides)
    images = len(few_shot_indices(data.seen_labels, shots, data.seed))
    batch = min(base.optim.batch_size, images - images % 2)  # even: mixup pairs images
    overrides = [
        *cfg.finetune_overrides,
        *_common_keys(data, arm, cfg, run_dir, cfg.finetune_steps, images, batch),
        f"init={init if init else repr('')}",  # '' (quoted for YAML): from scratch
        f"data.shots={shots}",
        f"data.seed={data.seed}",
        "optim.grad_accum=1",
    ]
    if regulariser != "none":
        overrides.append(f"regularisers.{regulariser}.enabled=true")
    if regulariser == "landmark":
        overrides.append("landmarks.source=predictor")
    return _run_stage(FINETUNE, cfg.finetune_config, overrides, run_dir, arm)


def evaluate(loaded: tuple[Any, Any], data: SeedData) -> dict[str, Any]:
    """Verification report of an (encoder, landmark predictor or None) on the seed's unseen pairs, with the
    landmarks it was trained on: its learned predictor's, MediaPipe's for the other landmark-token runs, the grid
    for the DINO arm."""
    from lafs.data.pairs import load_bin
    from lafs.evaluation.verification import evaluate_pairs
    from lafs.models.image_encoder import ImageEncoder

    encoder, predictor = loaded
    images, issame = load_bin(data.pairs_bin, 112)
    if predictor is not None:  # the landmark-regulariser runs trained their predictor: it places the tokens
        report = evaluate_pairs(ImageEncoder(encoder, predictor), images, issame, 64)
    elif encoder.landmark_set == data.landmark_set:  # MediaPipe's (found) or the template's points, as in training
        landmarks = np.where(data.pair_found[:, None, None], data.pair_landmarks, encoder.template.numpy())
        permutation = get_landmark_set(data.landmark_set).flip_permutation
        report = evaluate_pairs(encoder, images, issame, 64, landmarks=landmarks, flip_permutation=permutation)
    else:  # the grid: the encoder's template
        report = evaluate_pairs(encoder, images, issame, 64)
    return {key: report[key] for key in ("accuracy", "accuracy_std", "auc", "eer", "num_pairs")}


def _evaluated(folder: Path, data: SeedData, load: Callable[[], Any]) -> dict[str, Any]:
    """The verification report of the encoder ``load()`` builds, computed once and kept in ``folder``."""
    path = folder / "unseen_eval.json"
    try:
        return dict(read_json(path))
    except (OSError, ValueError):
        report = evaluate(load(), data)
        write_atomic(path, json.dumps(report, indent=2) + "\n")
        return report


def _record(arm: str, shots: int, regulariser: str, seed: int, report: dict[str, Any]) -> dict[str, Any]:
    return {"arm": arm, "shots": shots, "regulariser": regulariser, "seed": seed, **report}


def untrained_encoder(name: str, landmark_set: str, seed: int) -> tuple[Any, None]:
    """The reference every arm starts from before training: the encoder at its seeded initialisation."""
    torch.manual_seed(seed)
    return build_encoder(EncoderConfig(name=name, landmark_set=landmark_set)), None


def run_protocol(cfg: FewShotConfig) -> list[dict[str, Any]]:
    """Every stage of every seed (skipping finished ones); one record per evaluated encoder.

    Records: ``arm``, ``shots`` (0: pretrained only, no fine-tuning), ``regulariser`` (``-`` without fine-tuning),
    ``seed``, ``accuracy``, ``accuracy_std`` (over the 10 folds), ``auc``, ``eer``, ``num_pairs``.
    """
    cfg.validate()
    faces = prepare_faces(cfg)
    paths, labels, names, cache = prepare_landmarks(cfg, faces)
    records = []
    for seed in cfg.seeds:
        data = prepare_seed(cfg, seed, paths, labels, names, cache)
        for arm in cfg.arms:
            init = None
            if arm == "none":
                folder = data.folder / "untrained"
                report = _evaluated(folder, data, partial(untrained_encoder, cfg.encoder, cfg.landmark_set, seed))
            else:
                init = pretrain(cfg, data, arm)
                report = _evaluated(init, data, partial(load_encoder_and_predictor, init))
            records.append(_record(arm, 0, "-", seed, report))
            for shots in cfg.shots:
                for regulariser in cfg.regularisers:
                    if arm == "dino" and regulariser == "landmark":
                        logger.info("dino arm: no landmark regulariser (its tokens are a fixed grid, not landmarks)")
                        continue
                    run_dir = finetune(cfg, data, arm, init, shots, regulariser)
                    report = _evaluated(run_dir, data, partial(load_encoder_and_predictor, run_dir))
                    records.append(_record(arm, shots, regulariser, seed, report))
    return records
