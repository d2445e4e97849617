"""What the inference commands (``tools/embed.py``, ``tools/verify.py``) share: finding and reading face images,
aligning photos with MediaPipe, writing embeddings, cosine similarity and thresholds taken from an evaluation report.

Without alignment, images must already be aligned square crops (resized to 112 x 112 when of another size; larger
than `MAX_CROP_SIDE` they are photos, refused with the advice to align). With
alignment, a photo of any size is read upright (EXIF orientation applied), MediaPipe's face mesh looks at the whole
photo and then at overlapping windows of 1/2 and 1/4 of its short side (its detector misses small faces), and the
eyes, nose tip and mouth corners map the face onto the ArcFace 112 x 112 template; of several faces the largest is
aligned, and a warning names where it is. Failures come back with a reason, never dropped.

The encoder then gets the landmarks it was trained with (`lafs.export.inference.open_encoder`): for ``mediapipe``,
MediaPipe runs again on each aligned crop, as the training set's landmark cache was made (`crop_landmarks`).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from lafs.data.folder import IMAGE_SUFFIXES
from lafs.data.images import UndecodableImage, check_pixel_count, read_image_file, resize_square
from lafs.data.open import MIN_IMAGE_SIZE
from lafs.errors import DataError
from lafs.evaluation.verification import far_key
from lafs.files import read_json, temporary_name
from lafs.landmarks.align import ALIGNED_SIZE, align_face, estimate_alignment
from lafs.landmarks.mediapipe import FaceMeshDetector, five_points_from_mesh
from lafs.landmarks.provenance import TEMPLATE, LandmarkChoice
from lafs.landmarks.sources import MediaPipeLandmarks

NO_FACE, UNREADABLE, NOT_ALIGNED = "no face", "unreadable", "not an aligned crop"
MAX_CROP_SIDE = 2 * ALIGNED_SIZE  # px: a larger square image is a photo (LFW's 250 x 250 are), not an aligned crop
MIN_CROP_SIDE = MIN_IMAGE_SIZE  # px: the smallest input training accepts holds no less of a face
PHOTO_MAX_FACES = 4  # faces MediaPipe looks for in a photo: enough to tell the user there were several

logger = logging.getLogger("lafs.photos")
MIN_WINDOW = 192  # px: smaller windows hold faces too small to give a useful crop
WINDOW_LEVELS = 2  # window sizes tried after the whole photo: 1/2, then 1/4 of its short side


def collect_images(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files named directly, plus every image under each folder (recursively, sorted); order kept."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"{item}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
            paths += found
        elif item.exists():
            paths.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    return paths


def read_photo(path: Path) -> np.ndarray:
    """A photo as H x W x 3 uint8 RGB, turned upright by its EXIF orientation."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise UndecodableImage(exc.strerror or str(exc)) from None
    # Unlike the dataset readers, no IMREAD_IGNORE_ORIENTATION: a sideways face is harder for MediaPipe to find.
    if data.size:
        check_pixel_count(data)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB) if data.size else None
    if image is None:
        raise UndecodableImage("does not decode as an image")
    return image


def _window_starts(length: int, side: int) -> list[int]:
    """Starts of windows of ``side`` overlapping by half and reaching the end of ``length``."""
    return sorted({*range(0, length - side, side // 2), length - side})


def find_mesh(detector: FaceMeshDetector, image: np.ndarray, name: str = "photo") -> np.ndarray | None:
    """Mesh (478, 3) in ``image`` pixels of the largest face in the whole photo (a warning names it when there are
    several) or, failing that, of the first window with a face."""
    faces = detector.faces(image)
    if len(faces) > 1:
        (left, top), (right, bottom) = faces[0][:, :2].min(0), faces[0][:, :2].max(0)
        logger.warning(
            f"{name}: {len(faces)} faces; using the largest, at x {left:.0f}..{right:.0f}, y {top:.0f}..{bottom:.0f} "
            "(crop the photo to choose another)"
        )
    mesh = faces[0] if faces else None
    height, width = image.shape[:2]
    side = min(height, width) // 2
    for _ in range(WINDOW_LEVELS):
        if mesh is not None or side < MIN_WINDOW:
            break
        for y in _window_starts(height, side):
            for x in _window_starts(width, side):
                mesh = detector(image[y : y + side, x : x + side])
                if mesh is not None:
                    mesh[:, :2] += (x, y)
                    return mesh
        side //= 2
    return mesh


def align_photo(detector: FaceMeshDetector, image: np.ndarray, name: str = "photo") -> np.ndarray | None:
    """The 112 x 112 ArcFace crop of the largest face in an RGB photo (`find_mesh`), or None if MediaPipe finds
    none."""
    mesh = find_mesh(detector, image, name)
    if mesh is None:
        return None
    points = five_points_from_mesh(mesh)
    scale = float(np.sqrt(abs(np.linalg.det(estimate_alignment(points)[:, :2]))))
    if scale < 0.5:  # bilinear warping aliases when shrinking more than 2x: area-filter the photo down first
        height, width = image.shape[:2]
        size = (max(1, round(width * 2 * scale)), max(1, round(height * 2 * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        points = points * np.array([size[0] / width, size[1] / height], dtype=np.float32)
    return align_face(image, points)[0]


def _aligned_crop(path: Path) -> np.ndarray:
    image = read_image_file(path)
    height, width = image.shape[:2]
    if height != width:
        raise DataError(f"{NOT_ALIGNED}: {width}x{height} is not square (photos need --align)")
    if height > MAX_CROP_SIDE:
        raise DataError(f"{NOT_ALIGNED}: {width}x{height} is a photo, not a face crop (photos need --align)")
    if height < MIN_CROP_SIDE:  # upscaled, a 1 x 1 image was embedded like a face (cosine 0.89 to a real one)
        raise DataError(f"{NOT_ALIGNED}: {width}x{height} is too small to hold a face (at least {MIN_CROP_SIDE} px)")
    return resize_square(image, ALIGNED_SIZE)


def align_photo_file(detector: FaceMeshDetector, path: Path) -> tuple[np.ndarray | None, str]:
    """(112 x 112 crop, "") of the photo at ``path``, or (None, reason): ``unreadable: ...`` or ``no face[: ...]``."""
    try:
        photo = read_photo(path)
    except UndecodableImage as exc:
        return None, f"{UNREADABLE}: {str(exc).removeprefix(f'{path}: ')}"
    try:
        crop = align_photo(detector, photo, str(path))
    except ValueError as exc:  # five points too degenerate for a similarity transform: no usable face either
        return None, f"{NO_FACE}: {exc}"
    return (crop, "") if crop is not None else (None, NO_FACE)


def _load_one(path: Path, detector: FaceMeshDetector | None) -> tuple[np.ndarray | None, str]:
    """(crop, "") or (None, reason) for one image: found and aligned with ``detector``, or an aligned crop if None."""
    if detector is not None:
        return align_photo_file(detector, path)
    try:
        return _aligned_crop(path), ""
    except UndecodableImage as exc:
        return None, f"{UNREADABLE}: {str(exc).removeprefix(f'{path}: ')}"
    except DataError as exc:
        return None, str(exc)


def load_faces(
    paths: Sequence[str | os.PathLike[str]], align: bool, detector: FaceMeshDetector | None = None
) -> tuple[list[np.ndarray], list[Path], list[tuple[Path, str]]]:
    """(112 x 112 RGB crops, their paths, (path, reason) of every image that gave none), in input order.

    ``align=False``: the images are aligned crops already. ``align=True``: faces are found with ``detector`` (one
    made and closed here when None).
    """
    crops: list[np.ndarray] = []
    kept: list[Path] = []
    failures: list[tuple[Path, str]] = []
    own = FaceMeshDetector(refine_landmarks=True, max_num_faces=PHOTO_MAX_FACES) if align and detector is None else None
    finder = (own if own is not None else detector) if align else None
    try:
        for path in map(Path, paths):
            crop, reason = _load_one(path, finder)
            if crop is None:
                failures.append((path, reason))
            else:
                crops.append(crop)
                kept.append(path)
    finally:
        if own is not None:
            own.close()
    return crops, kept, failures


def crop_landmarks(choice: LandmarkChoice, crops: Sequence[np.ndarray]) -> tuple[np.ndarray | None, int]:
    """(landmarks (N, K, 2) float32 pixels to give the encoder with ``crops``, or None when it places its own; the
    number of crops where MediaPipe found no face, which get the template).

    ``template``: None, the encoder's own template (a Part fViT's is its patch grid); ``mediapipe``: MediaPipe's face
    mesh on each aligned crop, scaled to the encoder's input size (one detector, in this process).
    """
    if not choice.takes_landmarks or choice.source == TEMPLATE:  # the encoder places its own (template) landmarks
        return None, 0
    template = choice.template()
    points = np.repeat(template[None], len(crops), axis=0)
    assert choice.landmark_set is not None  # template() above checked it
    detector = MediaPipeLandmarks(choice.landmark_set)
    missed = 0
    try:
        for row, crop in enumerate(crops):
            found, valid = detector(crop)
            if valid.all():
                height, width = crop.shape[:2]
                points[row] = found * np.array([choice.image_size / width, choice.image_size / height], np.float32)
            else:
                missed += 1
    finally:
        detector.close()
    return points, missed


def embedding_side_paths(output: Path) -> tuple[Path, Path]:
    """OUT.index.csv and OUT.failed.csv beside OUT.npy."""
    return output.with_suffix(".index.csv"), output.with_suffix(".failed.csv")


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_embeddings(output: Path, embeddings: np.ndarray, paths: list[Path], failures: list[tuple[Path, str]]) -> None:
    """Write OUT.npy (one row per image), OUT.index.csv (row,path) and, with failures, OUT.failed.csv (path,reason).

    Every file is written under a temporary name, then all are renamed into place; a stale failure list is removed.
    """
    index_path, failed_path = embedding_side_paths(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    contents: list[tuple[Path, np.ndarray | str]] = [
        (output, embeddings),
        (index_path, _csv_text(("row", "path"), list(enumerate(map(str, paths))))),
    ]
    if failures:
        contents.append((failed_path, _csv_text(("path", "reason"), [(str(p), r) for p, r in failures])))
    try:
        for target, content in contents:
            temporary = temporary_name(target)
            staged.append((temporary, target))  # before writing: a write that fails half-way leaves it too
            with open(temporary, "wb") as file:
                if isinstance(content, str):
                    file.write(content.encode("utf-8", "surrogateescape"))  # a non-UTF-8 file name, byte for byte
                else:
                    np.save(file, content)
    except BaseException:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        raise
    for temporary, target in staged:
        os.replace(temporary, target)
    if not failures:
        failed_path.unlink(missing_ok=True)


NO_DIRECTION = "no embedding: the encoder gave a non-finite (NaN or infinite) or all-zero vector"


def unusable_rows(embeddings: np.ndarray) -> np.ndarray:
    """(N,) bool: rows with no direction to compare, a NaN or infinite entry or all zeros (`NO_DIRECTION`)."""
    embeddings = np.asarray(embeddings)
    return ~np.isfinite(embeddings).all(axis=1) | ~(embeddings != 0).any(axis=1)


def l2_normalise_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows (N, D) scaled to unit length, as float32; exact for any finite row, also one whose sum of squares would
    overflow (each row is divided by its largest magnitude before squaring). `unusable_rows` come back as NaN:
    callers report them, never write them as vectors."""
    rows = np.asarray(embeddings, dtype=np.float64)
    bad = unusable_rows(rows)
    peak = np.where(bad, 1.0, np.abs(np.where(np.isfinite(rows), rows, 0.0)).max(axis=1))[:, None]
    scaled = np.where(bad[:, None], 0.0, rows) / peak
    unit = scaled / np.where(bad, 1.0, np.linalg.norm(scaled, axis=1))[:, None]
    unit[bad] = np.nan
    return unit.astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors, in [-1, 1]; `DataError` (`NO_DIRECTION`) when either has no direction."""
    pair = l2_normalise_rows(np.stack([np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)]))
    if np.isnan(pair).any():
        raise DataError(NO_DIRECTION)
    return float(np.clip(np.dot(pair[0].astype(np.float64), pair[1].astype(np.float64)), -1.0, 1.0))


def threshold_from_report(
    report_path: str | os.PathLike[str], far: float, set_name: str | None = None
) -> tuple[float, str]:
    """(cosine threshold, "LFW threshold at FAR 1e-03") from ``tools/evaluate.py``'s report.json (or its folder).

    ``set_name`` may be left out when the report holds one set only. A missing file, set or FAR is a `DataError`.
    """
    path = Path(report_path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = read_json(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the evaluation report ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise DataError(f"{path}: not a JSON evaluation report ({exc})") from None
    sets = report.get("sets") if isinstance(report, dict) else None
    if not isinstance(sets, dict) or not sets:
        raise DataError(f'{path}: no "sets" in this evaluation report')
    if set_name is None:
        if len(sets) > 1:
            raise DataError(f"{path}: holds several sets ({', '.join(sets)}); choose one with --set")
        name = next(iter(sets))
    else:
        matches = [name for name in sets if name.lower() == set_name.lower()]
        if not matches:
            raise DataError(f"{path}: no set {set_name!r} in this report (it has {', '.join(sets)})")
        name = matches[0]
    key = far_key(far)
    thresholds = sets[name].get("threshold_at_far") if isinstance(sets[name], dict) else None
    if not isinstance(thresholds, dict) or key not in thresholds:
        available = ", ".join(thresholds) if isinstance(thresholds, dict) and thresholds else "none"
        raise DataError(f"{path}: set {name!r} has no threshold at FAR {key} (available: {available})")
    value = thresholds[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{path}: set {name!r} threshold at FAR {key} is not a number ({value!r})")
    return float(value), f"{name.upper()} threshold at FAR {key}"
