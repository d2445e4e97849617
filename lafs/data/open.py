"""One way in: `open_dataset` opens a ``.rec``, an image folder, a list file or the built-in synthetic faces
(``path="synthetic"``), with landmarks and few-shot subsets.

Every dataset it returns yields dicts ``{"image": H x W x 3 uint8 RGB, "label": int, "index": int}`` (``index`` is
the record's index in the underlying file, also inside subsets) plus, unless ``landmarks="none"``,
``"landmarks"`` (K, 2) float32 pixels and ``"landmark_valid"`` (K,) bool. Datasets expose ``labels`` (N,) and
``num_classes``. Synthetic faces carry their exact landmarks (all valid) instead of the template.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
from torch.utils.data import Dataset

from lafs.data.folder import few_shot_indices, open_image_folder, open_list_file
from lafs.data.memory import InMemoryImages
from lafs.data.recordio import FaceRecordDataset
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig
from lafs.errors import ConfigError, DataError
from lafs.files import write_atomic
from lafs.landmarks.cache import LandmarkCache
from lafs.landmarks.sources import scaled_template

LIST_SUFFIXES = frozenset({".csv", ".txt", ".lst"})
SYNTHETIC = "synthetic"  # the path that names the built-in synthetic faces (lafs.data.synthetic)
_SYNTHETIC_LANDMARKS = frozenset({"", "template", "none"})  # exact landmarks ("" or "template") or none
MissingPolicy = Literal["template", "skip"]


MIN_IMAGE_SIZE = 16  # px: smaller squares hold no face to learn or compare
MAX_IMAGE_SIZE = 1024  # face crops are 112 px, ViT inputs 224: four times the largest is already far out


@dataclass
class DatasetConfig:
    path: str = ""  # a .rec (+ .idx), an image folder (a sub-folder per identity), a path,label CSV or "synthetic"
    bgr: bool = False  # the source stores BGR pixels (MS1MV3's .rec does; WebFace4M's is RGB)
    image_size: int = 112  # every image is resized to this square: the ArcFace crop the encoders take
    # "template" (aligned faces), "none", a landmark cache folder (tools/landmarks.py), or "mediapipe": the run finds
    # the data's cache (<path>.landmarks-<set>-<size> beside it) or computes it there once, with progress.
    landmarks: str = "template"
    landmark_set: str = "mediapipe196"  # must match the encoder's; a cache records its own and is checked against it
    missing_landmarks: MissingPolicy = "template"  # faces MediaPipe missed: use the template, or skip the image
    shots: int | None = None  # keep N images per identity (few-shot, LAFS's strongest setting); None keeps all
    seed: int = 0  # which images a few-shot subset keeps
    max_bad_fraction: float = 0.01  # stop if more than this share of records read fail to decode
    # Decode every image once into memory at start-up (a few hundred MB per 10,000 faces at 112 px): with
    # num_workers=0 every core then trains, the fastest data flow on a small CPU machine. Off: decode per epoch.
    in_memory: bool = False

    def validate(self) -> None:
        if not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:  # 100,000 px squares filled memory at once
            raise ConfigError(
                f"data.image_size must lie in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {self.image_size}"
            )
        if self.shots is not None and self.shots < 1:
            raise ConfigError(f"data.shots must be >= 1 or null, got {self.shots}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(f"data.max_bad_fraction must lie in [0, 1], got {self.max_bad_fraction}")


class IndexSubset(Dataset):
    """Items ``positions`` of ``base``, in that order; each item keeps its own ``index`` and label."""

    def __init__(self, base: Any, positions: np.ndarray) -> None:
        self.base, self.positions = base, np.asarray(positions, dtype=np.int64)
        self.labels = np.asarray(base.labels)[self.positions]
        self.num_classes = base.num_classes

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.base[int(self.positions[i])]


class WithLandmarks(Dataset):
    """Adds ``landmarks`` (K, 2) and ``landmark_valid`` (K,) to each item, from a cache or the template.

    Faces without cached landmarks get the template (``missing="template"``, marked invalid so losses that need
    real landmarks can ignore them) or are left out of the dataset (``missing="skip"``).
    """

    def __init__(
        self,
        base: Any,
        landmark_set: str,
        image_size: int,
        cache: LandmarkCache | None = None,
        missing: MissingPolicy = "template",
    ) -> None:
        self.base, self.cache = base, cache
        self.template = scaled_template(landmark_set, image_size, image_size)
        kept = np.flatnonzero(cache.found & cache.done) if cache is not None and missing == "skip" else None
        # Without a filter: a range and the base's own labels, not per-record copies (a mapped .rec's labels stay
        # mapped, and pickling to a spawned worker sends no array)
        self.positions: range | np.ndarray = range(len(base)) if kept is None else kept
        self._kept_labels = None if kept is None else np.asarray(base.labels)[kept]
        self.num_classes = base.num_classes

    @property
    def labels(self) -> np.ndarray:
        """Class of every item, (N,)."""
        return self.base.labels if self._kept_labels is None else self._kept_labels

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.base[int(self.positions[i])])
        found = False
        if self.cache is not None:
            landmarks, found = self.cache.lookup(item["index"])
        item["landmarks"] = landmarks if found else self.template.copy()
        item["landmark_valid"] = np.full(len(self.template), found or self.cache is None)
        return item


class _SourceOptions(TypedDict):
    """The options every file source takes (so ``**options`` keeps each one's own type)."""

    bgr: bool
    image_size: int | None
    max_bad_fraction: float


def _open_base(path: Path, bgr: bool, image_size: int | None, max_bad_fraction: float) -> Any:
    options: _SourceOptions = {"bgr": bgr, "image_size": image_size, "max_bad_fraction": max_bad_fraction}
    if path.is_dir():
        return open_image_folder(path, **options)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.suffix == ".rec":
        return FaceRecordDataset(path, **options)
    if path.suffix.lower() in LIST_SUFFIXES:
        return open_list_file(path, **options)
    raise DataError(
        f"{path}: not a .rec, an image folder or a path,label list file ({', '.join(sorted(LIST_SUFFIXES))})"
    )


def _open_cache(path: str, base: Any, landmark_set: str, image_size: int) -> LandmarkCache:
    cache = LandmarkCache.open(path)
    info = cache.info
    if info.num_images != len(base):
        raise DataError(f"{path}: cache holds {info.num_images} images, the dataset has {len(base)}")
    if info.landmark_set != landmark_set or info.image_size != image_size:
        raise DataError(
            f"{path}: cache has landmark set {info.landmark_set} at {info.image_size} px, "
            f"this run wants {landmark_set} at {image_size} px"
        )
    if not cache.complete:
        raise DataError(
            f"{path}: cache is incomplete ({info.processed} of {info.num_images}); resume tools/landmarks.py"
        )
    return cache


def open_dataset(
    path: str | os.PathLike[str],
    *,
    bgr: bool = False,
    image_size: int | None = 112,
    landmarks: str = "template",
    landmark_set: str = "mediapipe196",
    missing_landmarks: MissingPolicy = "template",
    shots: int | None = None,
    seed: int = 0,
    max_bad_fraction: float = 0.01,
    run_dir: str | os.PathLike[str] | None = None,
    synthetic: SyntheticFacesConfig | None = None,
    in_memory: bool = False,
) -> Any:
    """Open a face dataset (see the module docstring); options as in `DatasetConfig`.

    ``image_size=None`` keeps the stored size (landmark extraction does). With ``shots`` and a ``run_dir``, the
    chosen subset is written to ``run_dir/few_shot.csv`` (``index,label``) so the run can be reproduced.

    ``path="synthetic"`` renders the built-in synthetic faces from ``synthetic`` (the generator's config; its
    defaults when None), with its ``landmark_set`` and ``image_size`` replaced by the arguments here. Their landmarks
    are exact, so ``landmarks`` may only be "template" (or "", meaning the same) or "none"; ``bgr`` must be False
    (they are drawn in RGB); ``missing_landmarks`` and ``max_bad_fraction`` do not apply. ``synthetic`` is ignored
    for every other path. ``in_memory`` decodes the images once into memory (`lafs.data.memory`; a fixed
    ``image_size`` needed).
    """
    if landmarks != "none" and image_size is None:
        raise ConfigError("landmarks need a fixed image_size (their pixels are the model's input pixels)")
    if str(path) == SYNTHETIC:
        dataset = _open_synthetic(synthetic, bgr, image_size, landmarks, landmark_set)
        return dataset if shots is None else few_shot_subset(dataset, shots, seed, run_dir)
    path = Path(path)
    dataset = _open_base(path, bgr, image_size, max_bad_fraction)
    if in_memory:
        if image_size is None:
            raise ConfigError("data.in_memory needs a fixed data.image_size")
        dataset = InMemoryImages(dataset, image_size, str(path))
    if landmarks != "none":
        assert image_size is not None  # checked on entry: landmarks need a fixed size
        cache = None if landmarks == "template" else _open_cache(landmarks, dataset, landmark_set, image_size)
        dataset = WithLandmarks(dataset, landmark_set, image_size, cache, missing_landmarks)
    if shots is not None:
        dataset = few_shot_subset(dataset, shots, seed, run_dir)
    return dataset


def _open_synthetic(
    synthetic: SyntheticFacesConfig | None, bgr: bool, image_size: int | None, landmarks: str, landmark_set: str
) -> Any:
    if bgr:
        raise ConfigError("data.bgr: synthetic faces are drawn in RGB; leave bgr false")
    if landmarks not in _SYNTHETIC_LANDMARKS:
        raise ConfigError(
            f"data.landmarks={landmarks}: synthetic faces carry their exact landmarks; use template or none, "
            "not a landmark cache"
        )
    if image_size is None:
        raise ConfigError("synthetic faces need a fixed data.image_size")
    cfg = dataclasses.replace(synthetic or SyntheticFacesConfig(), landmark_set=landmark_set, image_size=image_size)
    faces = SyntheticFaces(cfg)
    return faces if landmarks != "none" else WithoutLandmarks(faces)


class WithoutLandmarks(Dataset):
    """``base``'s items without their ``landmarks`` and ``landmark_valid`` (``landmarks="none"`` on synthetic faces)."""

    def __init__(self, base: Any) -> None:
        self.base, self.labels, self.num_classes = base, base.labels, base.num_classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.base[i])
        item.pop("landmarks", None)
        item.pop("landmark_valid", None)
        return item


def few_shot_subset(dataset: Any, shots: int, seed: int, run_dir: str | os.PathLike[str] | None = None) -> IndexSubset:
    """``shots`` seeded images of every identity of ``dataset``; with ``run_dir``, the list goes to few_shot.csv."""
    subset = IndexSubset(dataset, few_shot_indices(np.asarray(dataset.labels), shots, seed))
    if run_dir is not None:
        write_few_shot_list(subset, run_dir)
    return subset


def write_few_shot_list(dataset: Any, run_dir: str | os.PathLike[str]) -> Path | None:
    """Write ``run_dir/few_shot.csv`` (``index,label`` of each kept image) when ``dataset`` is a few-shot subset.

    Training runs call it once their start-up checks have passed, so a failed start writes nothing.
    """
    if not isinstance(dataset, IndexSubset):
        return None
    subset = dataset
    base_index = np.asarray(getattr(subset.base, "positions", range(len(subset.base))))[subset.positions]
    rows = "".join(
        f"{index},{label}\n" for index, label in zip(base_index.tolist(), subset.labels.tolist(), strict=True)
    )
    return write_atomic(Path(run_dir) / "few_shot.csv", "index,label\n" + rows)
