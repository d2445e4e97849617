"""How many views per face and how each is augmented: `ViewConfig`, and where the views are made."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from lafs.errors import ConfigError

NUM_GLOBAL = 2  # LAFS/DINO: two global views, both seen by the teacher
COLOR_JITTER = (0.4, 0.4, 0.2, 0.1)  # DINO's ColorJitter strengths: brightness, contrast, saturation, hue
BLUR_SIGMA = (0.1, 2.0)  # DINO's Gaussian blur sigma range, pixels
LANDMARK_LOCAL_SCALE = (0.4, 1.0)  # LAFS locals use the global crop recipe, not DINO's small crops
PATCH_LOCAL_SCALE = (0.05, 0.4)  # DINO's small local crops
PATCH_LOCAL_SIZE = 48  # DINO renders locals at 96 of the globals' 224: at 112, 48 px = 6 x 6 patches of 8
ViewKind = Literal["landmarks", "patches"]


@dataclass
class ViewConfig:
    """How many views per face and how each is augmented (LAFS pretraining; defaults from the official recipe)."""

    # "landmarks": LAFS views, tokens at the face's (jittered) landmarks, locals carry random subsets of ids.
    # "patches": the paper's DINO baseline, tokens on the regular patch grid of each view (a grid landmark set,
    # grid196: `lafs.views.patches`), DINO's small local crops; no jitter, no id permutation.
    kind: ViewKind = "landmarks"
    image_size: int = 112  # view side S in pixels: the ArcFace crop size the landmark-token encoders take
    num_local: int = 8  # LAFS's local views per image (DINO multi-crop count); 0 keeps the two globals only
    local_landmarks: int = 36  # landmarks kind: ids per local view, drawn with replacement (a 6 x 6 mosaic in LAFS)
    jitter_std: float = 5.0  # landmarks kind: Gaussian landmark jitter std, view pixels per coordinate (LAFS σ = 5)
    global_scale: tuple[float, float] = (0.4, 1.0)  # RandomResizedCrop area fraction of the globals (LAFS/DINO)
    # Area fraction of the local crops; None: the kind's, (0.4, 1) for landmarks (LAFS), (0.05, 0.4) for patches (DINO).
    local_scale: tuple[float, float] | None = None
    # Side of the local views in pixels; None: the kind's, image_size for landmarks (LAFS), 48 for patches (DINO).
    local_size: int | None = None
    ratio: tuple[float, float] = (0.75, 1.3333)  # crop aspect-ratio range (torchvision's RandomResizedCrop default)
    flip_prob: float = 0.5  # horizontal flip (with the left/right id permutation) as in DINO/LAFS
    color_jitter_prob: float = 0.8  # DINO: ColorJitter(0.4, 0.4, 0.2, 0.1) applied with p 0.8
    grayscale_prob: float = 0.2  # DINO: RandomGrayscale p 0.2
    blur_prob: tuple[float, float, float] = (1.0, 0.1, 0.5)  # Gaussian blur for global 1, global 2, locals (DINO)
    solarize_prob: float = 0.2  # solarisation of global 2 only (DINO/LAFS asymmetric recipe)
    photometric: bool = True  # False switches every photometric op off (geometry only), for tests and debugging
    # Where the one renderer runs. "accelerator": loader workers only decode and the training device renders whole
    # batches (`DeviceViews`); "loader": each worker renders its images' views (`LandmarkViews`). "auto": the
    # accelerator on a CUDA GPU, the loader elsewhere (on a CPU, worker processes render in parallel with the
    # training step instead of in series with it).
    make_on: Literal["auto", "accelerator", "loader"] = "auto"

    @property
    def local_crop_scale(self) -> tuple[float, float]:
        """The local crops' area-fraction range: ``local_scale``, or the kind's default when it is None."""
        if self.local_scale is not None:
            return self.local_scale
        return PATCH_LOCAL_SCALE if self.kind == "patches" else LANDMARK_LOCAL_SCALE

    @property
    def local_side(self) -> int:
        """The local views' side in pixels: ``local_size``, or the kind's default when it is None."""
        if self.local_size is not None:
            return self.local_size
        return PATCH_LOCAL_SIZE if self.kind == "patches" else self.image_size

    def validate(self) -> None:
        """Raise `ConfigError` for values no view can be made with."""
        if self.kind not in ("landmarks", "patches"):
            raise ConfigError(f"views.kind must be landmarks or patches, got {self.kind!r}")
        if self.image_size < 8:
            raise ConfigError(f"views.image_size must be at least 8 pixels (one 8 x 8 patch), got {self.image_size}")
        if not 8 <= self.local_side <= self.image_size:
            raise ConfigError(
                f"views.local_size must lie between 8 (one 8 x 8 patch) and views.image_size {self.image_size}, "
                f"got {self.local_side}"
            )
        if self.num_local < 0:
            raise ConfigError(f"views.num_local must be non-negative, got {self.num_local}")
        if self.local_landmarks < 1:
            raise ConfigError(f"views.local_landmarks must be at least 1, got {self.local_landmarks}")
        if not (math.isfinite(self.jitter_std) and self.jitter_std >= 0):
            raise ConfigError(f"views.jitter_std must be a finite non-negative number of pixels, got {self.jitter_std}")
        for name in ("global_scale", "local_scale"):
            if getattr(self, name) is None:  # local_scale: the kind's default
                continue
            low, high = _numbers(self, name, 2)
            if not 0 < low <= high <= 1:
                raise ConfigError(f"views.{name} must satisfy 0 < low <= high <= 1, got {getattr(self, name)}")
        low, high = _numbers(self, "ratio", 2)
        if not (0 < low <= high and math.isfinite(high)):
            raise ConfigError(f"views.ratio must satisfy 0 < low <= high, got {self.ratio}")
        if self.make_on not in ("auto", "accelerator", "loader"):
            raise ConfigError(f"views.make_on must be auto, accelerator or loader, got {self.make_on!r}")
        for name in ("flip_prob", "color_jitter_prob", "grayscale_prob", "solarize_prob"):
            _probability(name, getattr(self, name))
        for i, p in enumerate(_numbers(self, "blur_prob", 3)):
            _probability(f"blur_prob[{i}]", p)


def views_on_accelerator(cfg: ViewConfig, device: torch.device) -> bool:
    """Whether the views are rendered on ``device`` in batches (`DeviceViews`) rather than in the loader workers."""
    return cfg.make_on == "accelerator" or (cfg.make_on == "auto" and device.type == "cuda")


def _numbers(cfg: ViewConfig, name: str, length: int) -> tuple[float, ...]:
    value = getattr(cfg, name)
    if not isinstance(value, (tuple, list)) or len(value) != length:
        raise ConfigError(f"views.{name} must be {length} numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _probability(name: str, p: float) -> None:
    if not 0 <= p <= 1:
        raise ConfigError(f"views.{name} must be a probability between 0 and 1, got {p}")
