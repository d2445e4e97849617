"""IJB-B / IJB-C 1:1 template verification, following insightface's ``recognition/arcface_torch/eval_ijbc.py``.

The data is licensed; insightface's release lays a set out as ``ROOT/IJBC/loose_crop/*.jpg`` and ``ROOT/IJBC/meta/``
with three text files (whitespace separated, one record a line, no header):

- ``ijbc_face_tid_mid.txt``: ``image_name template_id media_id``;
- ``ijbc_template_pair_label.txt``: ``template_id_1 template_id_2 label`` (1 = same subject);
- ``ijbc_name_5pts_score.txt``: ``image_name x1 y1 ... x5 y5 detector_score``, the five points (eyes, nose tip,
  mouth corners, image-left first) in the loose crop's pixels, in OpenCV's integer-centre convention. They are
  converted to the project's convention (pixel ``j`` spans ``[j, j + 1)``) once, in `read_meta`.

Line ``i`` of the first and third file describe the same image (insightface relies on it; `read_meta` checks it).
An image may appear on several lines (in several templates).

Pipeline (insightface's, per image then per template):

1. align each loose crop by its five points onto the ArcFace 112 x 112 template;
2. embed it; with ``flip`` (test mode F2) the embedding of the image and of its mirror are SUMMED;
3. without ``feature_norm`` (N0) each image feature is L2-normalised; with it (N1) its norm is kept, so the norm
   acts as a quality weight (insightface's ``use_norm_score``);
4. with ``detector_score`` (D1) each image feature is multiplied by its detector score;
5. features of one media (video frames) are averaged; the media features of a template are summed, and the sum is
   L2-normalised;
6. a pair's score is the cosine of its two template features; TAR is read at FAR 1e-6 ... 1e-1.

insightface's published numbers use N1D1F2 (``IJBOptions(flip=True, feature_norm=True, detector_score=True)``,
name "NDF"); the options move TAR by whole points, so every report names them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from lafs.errors import DataError
from lafs.evaluation.landmarks import EvalLandmarks, landmarks_for_set
from lafs.evaluation.verification import far_key, far_target_resolvable, roc_auc, roc_curve, tar_at_far
from lafs.landmarks.align import align_face
from lafs.landmarks.provenance import LandmarkChoice

if TYPE_CHECKING:
    import torch

DATASETS = ("IJBB", "IJBC")
IJB_FAR_TARGETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
# insightface's five points put pixel centres on integers; the project puts them at j + 0.5.
_OPENCV_TO_PROJECT = 0.5


@dataclass
class IJBMeta:
    """One IJB set's meta data, one row per line of ``*_name_5pts_score.txt`` (== ``*_face_tid_mid.txt``)."""

    image_names: list[str]  # (N,) file names under loose_crop/
    template_ids: np.ndarray  # (N,) int64
    media_ids: np.ndarray  # (N,) int64
    pairs: np.ndarray  # (P, 2) int64 template ids
    labels: np.ndarray  # (P,) bool, True = same subject
    five_points: np.ndarray  # (N, 5, 2) float64, loose-crop pixels, project convention
    scores: np.ndarray  # (N,) float64 detector scores


@dataclass(frozen=True)
class IJBOptions:
    """How image features become template features (see the module docstring)."""

    flip: bool = True  # F: sum the embeddings of the image and its mirror
    feature_norm: bool = False  # N: keep each image feature's norm as a weight (else L2-normalise it first)
    detector_score: bool = False  # D: multiply each image feature by its detector score

    @property
    def name(self) -> str:
        """The enabled options as letters in insightface's order N, D, F ("NDF", "F", ...); "none" for none."""
        letters = "N" * self.feature_norm + "D" * self.detector_score + "F" * self.flip
        return letters or "none"

    @property
    def test_mode(self) -> str:
        """insightface's label, e.g. "N1D1F2" (F2 = flip embeddings summed, F0 = no flip)."""
        return f"N{int(self.feature_norm)}D{int(self.detector_score)}F{2 if self.flip else 0}"


# ---------------------------------------------------------------------------------------------------------- meta --


def _meta_paths(root: Path, dataset: str) -> tuple[Path, Path, Path]:
    prefix = dataset.lower()
    meta = root / "meta"
    return (
        meta / f"{prefix}_face_tid_mid.txt",
        meta / f"{prefix}_template_pair_label.txt",
        meta / f"{prefix}_name_5pts_score.txt",
    )


def _read_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    rows = [(number, line.split()) for number, line in enumerate(text.splitlines(), start=1)]
    rows = [(number, fields) for number, fields in rows if fields]
    if not rows:
        raise DataError(f"{path}: empty file")
    return rows


def _parse(path: Path, number: int, fields: list[str], count: int, what: str, kind: type) -> list:
    if len(fields) != count:
        raise DataError(f"{path}:{number}: expected {what} ({count} fields), got {len(fields)} fields")
    try:
        values = [kind(field) for field in fields]
    except ValueError:
        raise DataError(f"{path}:{number}: expected {what}, got {' '.join(fields)[:80]!r}") from None
    if kind is float and not all(np.isfinite(values)):
        raise DataError(f"{path}:{number}: non-finite number in {' '.join(fields)[:80]!r}")
    return values


def _read_int_table(path: Path, columns: int, what: str) -> np.ndarray:
    """An all-integer table (R, columns): fast path for the 8M-line pair file, line-by-line to name a bad line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    tokens = text.split()
    lines = sum(1 for line in text.splitlines() if line.strip())
    if tokens and len(tokens) == columns * lines:
        try:
            return np.array(tokens, dtype=np.int64).reshape(lines, columns)
        except ValueError:
            pass
    for number, fields in _read_lines(path):
        _parse(path, number, fields, columns, what, int)
    raise DataError(f"{path}: empty file")  # every line parsed, so the text was blank


def read_meta(root: str | Path, dataset: str) -> IJBMeta:
    """Read ``root/meta/<dataset>_*.txt``; ``root`` is the set's folder (``.../IJBC``), ``dataset`` IJBB or IJBC."""
    root = Path(root)
    dataset = dataset.upper()
    if dataset not in DATASETS:
        raise DataError(f"unknown IJB dataset {dataset!r} (choose from {', '.join(DATASETS)})")
    tid_mid_path, pair_path, points_path = _meta_paths(root, dataset)
    for path in (tid_mid_path, pair_path, points_path):
        if not path.is_file():
            raise DataError(f"{path}: missing (expected insightface's IJB layout ROOT/{dataset}/meta/)")

    tid_mid = _read_lines(tid_mid_path)
    names: list[str] = []
    ids = np.empty((len(tid_mid), 2), dtype=np.int64)
    for row, (number, fields) in enumerate(tid_mid):
        if len(fields) != 3:
            raise DataError(f"{tid_mid_path}:{number}: expected 'image template_id media_id', got {len(fields)} fields")
        names.append(fields[0])
        ids[row] = _parse(tid_mid_path, number, fields[1:], 2, "'image template_id media_id'", int)

    point_rows = _read_lines(points_path)
    if len(point_rows) != len(tid_mid):
        raise DataError(f"{points_path}: {len(point_rows)} images but {tid_mid_path.name} lists {len(tid_mid)}")
    five_points = np.empty((len(point_rows), 5, 2), dtype=np.float64)
    scores = np.empty(len(point_rows), dtype=np.float64)
    for row, (number, fields) in enumerate(point_rows):
        if len(fields) != 12:
            raise DataError(f"{points_path}:{number}: expected 'image x1 y1 ... x5 y5 score', got {len(fields)} fields")
        if fields[0] != names[row]:
            raise DataError(
                f"{points_path}:{number}: image {fields[0]!r}, but line {tid_mid[row][0]} of "
                f"{tid_mid_path.name} is {names[row]!r} (the files must list the same images in the same order)"
            )
        values = _parse(points_path, number, fields[1:], 11, "'image x1 y1 ... x5 y5 score'", float)
        five_points[row] = np.reshape(values[:10], (5, 2)) + _OPENCV_TO_PROJECT
        scores[row] = values[10]

    table = _read_int_table(pair_path, 3, "'template_id_1 template_id_2 label'")
    if not np.isin(table[:, 2], (0, 1)).all():
        bad = int(np.flatnonzero(~np.isin(table[:, 2], (0, 1)))[0])
        raise DataError(f"{pair_path}: pair {bad + 1} has label {table[bad, 2]}, expected 0 or 1")
    pairs = table[:, :2].copy()
    known = np.isin(pairs, ids[:, 0])
    if not known.all():
        bad = int(np.flatnonzero(~known.all(axis=1))[0])
        missing = pairs[bad][~known[bad]][0]
        raise DataError(f"{pair_path}: pair {bad + 1} uses template {missing}, which {tid_mid_path.name} never lists")
    return IJBMeta(
        image_names=names,
        template_ids=ids[:, 0].copy(),
        media_ids=ids[:, 1].copy(),
        pairs=pairs,
        labels=table[:, 2].astype(bool),
        five_points=five_points,
        scores=scores,
    )


# ----------------------------------------------------------------------------------------------------- alignment --


def read_image(path: Path) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB; a missing or undecodable file is a `DataError`."""
    if not path.is_file():
        raise DataError(f"{path}: missing image")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(f"{path}: not an image OpenCV can decode")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def align_image(path: Path, five_points: np.ndarray) -> np.ndarray:
    """The aligned 112 x 112 x 3 uint8 RGB face of the loose crop at ``path`` with its five points (5, 2)."""
    try:
        aligned, _ = align_face(read_image(path), five_points)
    except ValueError as exc:
        raise DataError(f"{path}: cannot align ({exc})") from None
    return aligned


def align_images(root: str | Path, meta: IJBMeta) -> Iterator[np.ndarray]:
    """Aligned 112 x 112 x 3 uint8 RGB faces, one per meta row, from ``root/loose_crop``, in order (lazily)."""
    folder = Path(root) / "loose_crop"
    for name, points in zip(meta.image_names, meta.five_points, strict=True):
        yield align_image(folder / name, points)


class AlignedFaces:
    """The aligned faces of an IJB set, one per meta row, for the landmark extractor's workers:
    ``load(i) -> {"image": 112 x 112 x 3 uint8 RGB, "index": i}`` (`lafs.landmarks.extract.ImageSource`)."""

    def __init__(self, root: str | Path, image_names: list[str], five_points: np.ndarray) -> None:
        self.folder = Path(root) / "loose_crop"
        self.image_names, self.five_points = image_names, five_points

    def __len__(self) -> int:
        return len(self.image_names)

    def load(self, index: int) -> dict[str, Any]:
        return {"image": align_image(self.folder / self.image_names[index], self.five_points[index]), "index": index}


def meta_file(root: str | Path, dataset: str) -> Path:
    """``root/meta/<dataset>_name_5pts_score.txt``: the file naming the images and their alignment."""
    return _meta_paths(Path(root), dataset.upper())[2]


def ijb_landmarks(
    choice: LandmarkChoice,
    root: str | Path,
    dataset: str,
    meta: IJBMeta,
    workers: int = 1,
    fallback_dir: str | Path | None = None,
) -> EvalLandmarks:
    """The landmarks ``choice`` gives the aligned faces of an IJB set (`lafs.evaluation.landmarks`); MediaPipe's are
    cached beside its ``meta/<set>_name_5pts_score.txt``, which fixes the images and their alignment."""
    images = functools.partial(AlignedFaces, str(root), meta.image_names, meta.five_points)
    return landmarks_for_set(choice, meta_file(root, dataset), images, len(meta.image_names), workers, fallback_dir)


def image_features(
    model: torch.nn.Module,
    root: str | Path,
    meta: IJBMeta,
    flip: bool = True,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    landmarks: np.ndarray | None = None,
    flip_permutation: np.ndarray | None = None,
) -> np.ndarray:
    """Embeddings (N, D) float32 of every meta row (flip-summed with ``flip``), streamed so memory stays bounded.

    ``landmarks`` (N, K, 2) pixels of the aligned faces and ``flip_permutation`` as for `embed_images`.
    """
    from lafs.evaluation.verification import embed_images

    chunk_size = max(batch_size, 1) * 8
    outputs: list[np.ndarray] = []
    chunk: list[np.ndarray] = []

    def embed() -> None:
        first = sum(len(done) for done in outputs)
        points = None if landmarks is None else landmarks[first : first + len(chunk)]
        outputs.append(embed_images(model, chunk, batch_size, flip, device, points, flip_permutation))

    for image in align_images(root, meta):
        chunk.append(image)
        if len(chunk) == chunk_size:
            embed()
            chunk = []
    if chunk:
        embed()
    if not outputs:
        raise DataError(f"{root}: no images listed")
    return np.concatenate(outputs)


# ------------------------------------------------------------------------------------------------------ templates --


def _normalise_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)


def template_features(
    image_features: np.ndarray, meta: IJBMeta, options: IJBOptions = IJBOptions()
) -> tuple[np.ndarray, np.ndarray]:
    """``(template ids (T,) sorted, features (T, D) float64 L2-normalised)`` from image features (N, D).

    ``image_features`` are the embeddings as `image_features` returns them (already flip-summed when
    ``options.flip``); here ``feature_norm`` and ``detector_score`` apply, then media mean and template sum.
    """
    features = np.asarray(image_features, dtype=np.float64)
    rows = len(meta.template_ids)
    if features.ndim != 2 or features.shape[0] != rows:
        raise ValueError(f"image_features must be ({rows}, D) for this meta, got shape {features.shape}")
    if not options.feature_norm:
        features = _normalise_rows(features)
    if options.detector_score:
        features = features * np.asarray(meta.scores, dtype=np.float64)[:, None]
    # Media are keyed by (template, media): a media id shared by two templates is averaged within each.
    keys = np.stack([meta.template_ids, meta.media_ids], axis=1)
    media_keys, media_of_row = np.unique(keys, axis=0, return_inverse=True)
    media_of_row = media_of_row.reshape(-1)
    media_sum = np.zeros((len(media_keys), features.shape[1]))
    np.add.at(media_sum, media_of_row, features)
    media_mean = media_sum / np.bincount(media_of_row, minlength=len(media_keys))[:, None]
    template_ids, template_of_media = np.unique(media_keys[:, 0], return_inverse=True)
    template_sum = np.zeros((len(template_ids), features.shape[1]))
    np.add.at(template_sum, template_of_media.reshape(-1), media_mean)
    return template_ids, _normalise_rows(template_sum)


def pair_scores(template_ids: np.ndarray, features: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine (P,) of each pair's template features (``features`` rows L2-normalised, ``template_ids`` sorted)."""
    template_ids = np.asarray(template_ids)
    pairs = np.asarray(pairs)
    index = np.clip(np.searchsorted(template_ids, pairs), 0, len(template_ids) - 1)
    if not np.array_equal(template_ids[index], pairs):
        missing = pairs[template_ids[index] != pairs][0]
        raise DataError(f"pair template {missing} has no template feature")
    scores = np.empty(len(pairs), dtype=np.float64)
    step = 100_000  # keeps the (step, D) temporaries small for IJB-C's 15.7M pairs
    for start in range(0, len(pairs), step):
        a = features[index[start : start + step, 0]]
        b = features[index[start : start + step, 1]]
        scores[start : start + step] = np.einsum("ij,ij->i", a, b)
    return np.clip(scores, -1.0, 1.0)


# --------------------------------------------------------------------------------------------------------- report --


def evaluate_features(
    image_features: np.ndarray,
    meta: IJBMeta,
    options: IJBOptions = IJBOptions(),
    far_targets: Sequence[float] = IJB_FAR_TARGETS,
) -> dict[str, Any]:
    """The 1:1 report of precomputed image features (see `evaluate_ijb` for the keys, less timing)."""
    template_ids, features = template_features(image_features, meta, options)
    scores = pair_scores(template_ids, features, meta.pairs)
    labels = meta.labels
    num_same = int(labels.sum())
    report: dict[str, Any] = {
        "options": {
            "name": options.name,
            "test_mode": options.test_mode,
            "flip": options.flip,
            "feature_norm": options.feature_norm,
            "detector_score": options.detector_score,
        },
        "tar_at_far": None,
        "tar_at_far_resolvable": {far_key(t): ok for t, ok in far_target_resolvable(labels, far_targets).items()},
        "auc": None,
        "num_pairs": int(labels.size),
        "num_same": num_same,
        "num_different": int(labels.size - num_same),
        "num_templates": len(template_ids),
        "num_media": len(np.unique(np.stack([meta.template_ids, meta.media_ids], axis=1), axis=0)),
        "num_images": len(meta.image_names),
        "embedding_dim": int(np.shape(image_features)[1]),
    }
    if 0 < num_same < labels.size:
        far, tar, _ = roc_curve(scores, labels)
        report["tar_at_far"] = {far_key(t): v for t, v in tar_at_far(scores, labels, far_targets).items()}
        report["auc"] = roc_auc(far, tar)
    return report


def evaluate_ijb(
    model: torch.nn.Module,
    root: str | Path,
    dataset: str,
    options: IJBOptions = IJBOptions(),
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    meta: IJBMeta | None = None,
    landmarks: np.ndarray | None = None,
    flip_permutation: np.ndarray | None = None,
) -> dict[str, Any]:
    """IJB-B / IJB-C 1:1 report of ``model`` on the set at ``root`` (``.../IJBC``).

    ``meta`` is the set's `read_meta` when already read; ``landmarks`` (one row per meta row, `ijb_landmarks`) and
    ``flip_permutation`` as for `embed_images`.

    Keys: ``dataset``; ``options`` (``name`` like "NDF", insightface's ``test_mode`` like "N1D1F2", and the three
    flags); ``tar_at_far`` keyed "1e-06" ... "1e-01" (the highest TAR whose FAR is at most the target, no
    interpolation; ``None`` if one class is missing) and ``tar_at_far_resolvable`` (whether ``1 / num_different``
    reaches the target; otherwise the value is the TAR at FAR 0); ``auc``; ``num_pairs``, ``num_same``,
    ``num_different``, ``num_templates``, ``num_media``, ``num_images``, ``embedding_dim``; ``seconds`` (wall time).
    """
    start = time.perf_counter()
    meta = read_meta(root, dataset) if meta is None else meta
    model = model.to(device)
    features = image_features(model, root, meta, options.flip, batch_size, device, landmarks, flip_permutation)
    report = {"dataset": dataset.upper(), **evaluate_features(features, meta, options)}
    report["seconds"] = time.perf_counter() - start
    return report
