"""Landmark-aware views for LAFS pretraining: crops and flips that move landmarks, id permutation, jitter, subsets.

Per face image, `LandmarkViews` makes 2 *global* views carrying all K landmarks and N *local* views carrying k
landmark ids drawn uniformly with replacement (arXiv 2403.08161; ``spec/losses.md`` §5). Local views are local
because of their landmark subset, not because they are small crops: both kinds use RandomResizedCrop to the output
size with scale (0.4, 1) and ratio (3/4, 4/3), then a horizontal flip with p = 0.5.

Geometry. Crop + resize + flip are ONE 2 x 3 affine map per view, applied with `warp_image` to the image and with
`transform_points` to the landmarks, both in the project convention (pixel ``j`` spans ``[j, j + 1)``), so the
landmarks follow the image exactly. albumentations' geometric transforms are deliberately not used: their
crop/resize keypoints follow another pixel-centre convention (up to 0.5 px off on a 112 px view), and a flip moves
keypoints without swapping left/right ids. Here a flip of a view of width ``S`` PERMUTES the ids with the landmark
set's ``flip_permutation``: ``new[k] = (S - old[flip[k]].x, old[flip[k]].y)`` (``old`` already cropped), so id
``k`` keeps meaning the same image-side facial point and keeps its position embedding.

Jitter. Gaussian noise, i.i.d. per coordinate with std ``jitter_std`` pixels *of the view*, is added to the view's
landmarks (globals and locals), as LAFS does to the landmarks of its clean crop. Local subsets are drawn from the
jittered landmarks. Invalid landmarks (mask False, e.g. filled in from the template) go through the same maps; the
mask travels with them (permuted on a flip, gathered for locals).

Photometry. The DINO/LAFS recipe, with albumentations' own pixel transforms: ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8,
ToGray p 0.2, GaussianBlur with sigma in (0.1, 2) and PIL's kernel size (p 1.0 global 1, 0.1 global 2, 0.5 locals),
Solarize at 128 with p 0.2 for global 2 only. Photometry never touches landmarks.

Randomness. All numbers of all views (crop boxes, flips, jitter, local ids, photometric seeds and parameters) come
from `draw_views`, a dozen vectorised torch draws per image or per batch, shared with `lafs.device_views`, which makes
the same views on the accelerator for whole batches (``views.make_on``). `LandmarkViews` seeds those draws with one
number from the ``np.random.Generator`` passed in. albumentations keeps its own generators; before each view its
pipelines are given fresh ones seeded from that view's drawn seed, so equal generator states give bit-identical
views. That per-call reseeding mutates the pipelines: use one `LandmarkViews` per process (DataLoader workers are
processes, so the usual setup is fine), not one shared across threads.
"""

from __future__ import annotations

import math
import operator
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from lafs.errors import ConfigError
from lafs.landmarks.align import transform_points, warp_image
from lafs.landmarks.sets import LandmarkSet, get_landmark_set
from lafs.photometric import BRIGHTNESS, GREY, HUE, IDENTITY, JITTER, ORDER, SIGMA, SOLARIZE

# albumentations asks PyPI for a newer version on import (a 2 s timeout on offline training machines): skip that.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A

NUM_GLOBAL = 2
_SEED_BOUND = 2**62  # seeds are drawn below this (torch.randint needs an int64 bound)
COLOR_JITTER = (0.4, 0.4, 0.2, 0.1)  # DINO's ColorJitter strengths: brightness, contrast, saturation, hue
BLUR_SIGMA = (0.1, 2.0)  # DINO's Gaussian blur sigma range, pixels


@dataclass
class ViewConfig:
    """How many views per face and how each is augmented (LAFS pretraining; defaults from the official recipe)."""

    image_size: int = 112  # view side S in pixels: the ArcFace crop size the landmark-token encoders take
    num_local: int = 8  # LAFS's local views per image (DINO multi-crop count); 0 keeps the two globals only
    local_landmarks: int = 36  # ids per local view, drawn with replacement: a 6 x 6 mosaic of 8 x 8 patches in LAFS
    jitter_std: float = 5.0  # std of the Gaussian landmark jitter, pixels of the view, per coordinate (LAFS σ = 5)
    global_scale: tuple[float, float] = (0.4, 1.0)  # RandomResizedCrop area fraction of the globals (LAFS/DINO)
    local_scale: tuple[float, float] = (0.4, 1.0)  # LAFS locals use the global crop recipe, not DINO's small crops
    ratio: tuple[float, float] = (0.75, 1.3333)  # crop aspect-ratio range (torchvision's RandomResizedCrop default)
    flip_prob: float = 0.5  # horizontal flip (with the left/right id permutation) as in DINO/LAFS
    color_jitter_prob: float = 0.8  # DINO: ColorJitter(0.4, 0.4, 0.2, 0.1) applied with p 0.8
    grayscale_prob: float = 0.2  # DINO: RandomGrayscale p 0.2
    blur_prob: tuple[float, float, float] = (1.0, 0.1, 0.5)  # Gaussian blur for global 1, global 2, locals (DINO)
    solarize_prob: float = 0.2  # solarisation of global 2 only (DINO/LAFS asymmetric recipe)
    photometric: bool = True  # False switches every photometric op off (geometry only), for tests and debugging
    # "accelerator": loader workers only decode and the training device makes all views in batches
    # (lafs.device_views); "loader": each worker makes its images' views with OpenCV + albumentations
    # (LandmarkViews). "auto": the accelerator on a CUDA GPU; the loader elsewhere (on a CPU, worker processes make
    # the views in parallel with the training step and uint8 OpenCV is faster than float tensor ops).
    make_on: Literal["auto", "accelerator", "loader"] = "auto"

    def validate(self) -> None:
        """Raise `ConfigError` for values no view can be made with."""
        if self.image_size < 8:
            raise ConfigError(f"views.image_size must be at least 8 pixels (one 8 x 8 patch), got {self.image_size}")
        if self.num_local < 0:
            raise ConfigError(f"views.num_local must be non-negative, got {self.num_local}")
        if self.local_landmarks < 1:
            raise ConfigError(f"views.local_landmarks must be at least 1, got {self.local_landmarks}")
        if not (math.isfinite(self.jitter_std) and self.jitter_std >= 0):
            raise ConfigError(f"views.jitter_std must be a finite non-negative number of pixels, got {self.jitter_std}")
        for name in ("global_scale", "local_scale"):
            low, high = _pair(self, name, 2)
            if not 0 < low <= high <= 1:
                raise ConfigError(f"views.{name} must satisfy 0 < low <= high <= 1, got {getattr(self, name)}")
        low, high = _pair(self, "ratio", 2)
        if not (0 < low <= high and math.isfinite(high)):
            raise ConfigError(f"views.ratio must satisfy 0 < low <= high, got {self.ratio}")
        if self.make_on not in ("auto", "accelerator", "loader"):
            raise ConfigError(f"views.make_on must be auto, accelerator or loader, got {self.make_on!r}")
        for name in ("flip_prob", "color_jitter_prob", "grayscale_prob", "solarize_prob"):
            _probability(name, getattr(self, name))
        for i, p in enumerate(_pair(self, "blur_prob", 3)):
            _probability(f"blur_prob[{i}]", p)


def views_on_accelerator(cfg: ViewConfig, device: torch.device) -> bool:
    """Whether the views are made on ``device`` in batches (`lafs.device_views`) rather than in the loader workers."""
    return cfg.make_on == "accelerator" or (cfg.make_on == "auto" and device.type == "cuda")


def _pair(cfg: ViewConfig, name: str, length: int) -> tuple[float, ...]:
    value = getattr(cfg, name)
    if not isinstance(value, (tuple, list)) or len(value) != length:
        raise ConfigError(f"views.{name} must be {length} numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _probability(name: str, p: float) -> None:
    if not 0 <= p <= 1:
        raise ConfigError(f"views.{name} must be a probability between 0 and 1, got {p}")


# ---------------------------------------------------------------------------------------------------------- geometry


def _uniform(
    low: torch.Tensor | float, high: torch.Tensor | float, shape: tuple[int, ...], generator: torch.Generator
) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=generator.device)


def sample_crop_boxes(
    height: int, width: int, scale: torch.Tensor, ratio: Sequence[float], generator: torch.Generator
) -> torch.Tensor:
    """RandomResizedCrop boxes ``(x0, y0, w, h)`` (..., 4) in project pixels of an ``height x width`` image.

    ``scale`` (..., 2) holds each box's (low, high) area-fraction range. torchvision's sampler, vectorised: per box,
    the first of 10 tries of area fraction ~ U(scale) and log aspect ~ U(log ratio) that fits, else a centre crop
    clamped to the ratio range; boxes are continuous rather than whole-pixel, since the warp is continuous.
    """
    shape = (*scale.shape[:-1], 10)
    target = height * width * _uniform(scale[..., :1], scale[..., 1:], shape, generator)
    aspect = torch.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), shape, generator))
    w, h = torch.sqrt(target * aspect), torch.sqrt(target / aspect)
    fits = (w <= width * (1 + 1e-6)) & (h <= height * (1 + 1e-6))
    first = fits.to(torch.uint8).argmax(-1, keepdim=True)  # the first try that fits (0 when none does)
    found = fits.any(-1)
    w = torch.gather(w, -1, first).squeeze(-1).clamp(max=width)
    h = torch.gather(h, -1, first).squeeze(-1).clamp(max=height)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fallback = (float(width), width / ratio[0])
    elif in_ratio > ratio[1]:
        fallback = (height * ratio[1], float(height))
    else:
        fallback = (float(width), float(height))
    w, h = torch.where(found, w, fallback[0]), torch.where(found, h, fallback[1])
    where = torch.rand((*found.shape, 2), generator=generator, device=generator.device)
    where = torch.where(found[..., None], where, 0.5)  # the fallback is centred
    return torch.stack([where[..., 0] * (width - w), where[..., 1] * (height - h), w, h], -1)


def view_maps(boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """2 x 3 maps (..., 2, 3) of boxes (..., 4) onto ``[0, size]^2``, each followed by x -> size - x if flipped.

    A box's corner (x0, y0) goes to (0, 0) and its far corner to (size, size), or mirrored along x when flipped.
    """
    x0, y0, w, h = boxes.unbind(-1)
    sx, sy = size / w, size / h
    zero = torch.zeros_like(sx)
    flipped = flips.to(sx.dtype)
    sign = 1.0 - 2.0 * flipped
    row_x = torch.stack([sign * sx, zero, sign * -x0 * sx + flipped * size], -1)
    return torch.stack([row_x, torch.stack([zero, sy, -y0 * sy], -1)], -2)


def flip_map(matrix: np.ndarray, size: int) -> np.ndarray:
    """A 2 x 3 ``matrix`` followed by the horizontal flip of a ``size``-wide image, x -> size - x."""
    flipped = np.array(matrix, dtype=np.float64)
    flipped[0] = -flipped[0]
    flipped[0, 2] += size
    return flipped


def is_flipping(matrix: np.ndarray) -> bool:
    """Whether a 2 x 3 map mirrors the image (negative determinant), i.e. whether landmark ids must be permuted."""
    m = np.asarray(matrix, dtype=np.float64)
    return bool(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0] < 0)


def move_landmarks(
    landmarks: np.ndarray, valid: np.ndarray, matrix: np.ndarray, flip_permutation: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks (K, 2) and mask (K,) of an image -> those of its view under ``matrix``; ids swap if it mirrors."""
    moved = transform_points(landmarks, matrix)
    if is_flipping(matrix):
        # Slot k of the mirrored view holds landmark flip[k] of the source, so id k names the same facial point.
        return moved[flip_permutation], valid[flip_permutation]
    return moved, valid


# ------------------------------------------------------------------------------------------------------- photometry


def _photometric(blur_prob: float, solarize_prob: float, cfg: ViewConfig) -> A.Compose:
    ops: list[Any] = [
        A.ColorJitter(*COLOR_JITTER, p=cfg.color_jitter_prob),
        A.ToGray(num_output_channels=3, method="weighted_average", p=cfg.grayscale_prob),
        # blur_limit=0: kernel size int(3.5 σ) * 2 + 1, matching PIL's GaussianBlur(radius=σ) that DINO uses.
        A.GaussianBlur(blur_limit=0, sigma_limit=BLUR_SIGMA, p=blur_prob),
    ]
    if solarize_prob > 0:
        ops.append(A.Solarize(threshold_range=(0.5, 0.5), p=solarize_prob))  # PIL's solarize(threshold=128)
    return A.Compose(ops, p=1.0, seed=0)


# ------------------------------------------------------------------------------------------------------------ views


@dataclass
class ViewDraws:
    """The random numbers of the V = 2 + N views of a batch of images, globals first (see `draw_views`)."""

    maps: torch.Tensor  # (B, V, 2, 3) image-to-view maps: crop box -> S x S, then maybe a flip
    jitter: torch.Tensor  # (B, V, K, 2) landmark jitter in view pixels
    local_ids: torch.Tensor  # (B, N, k) int64 landmark ids of the local views
    seeds: torch.Tensor  # (B, V) int64 seeds of each view's albumentations draws (the loader-worker path)
    photometric: torch.Tensor  # (B, V, NUM_PARAMS) per-view parameters of `lafs.photometric` (accelerator path)


def check_face(
    image: np.ndarray, landmarks: np.ndarray, valid: np.ndarray | None, landmark_set: LandmarkSet
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An H x W x 3 uint8 image, its (K, 2) float32 landmarks and (K,) bool mask (all valid when None), checked."""
    num_landmarks = landmark_set.num_landmarks
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H x W x 3 uint8 RGB, got shape {image.shape} and dtype {image.dtype}")
    landmarks = np.asarray(landmarks, dtype=np.float32)
    if landmarks.shape != (num_landmarks, 2):
        raise ValueError(f"landmarks must be ({num_landmarks}, 2) for set '{landmark_set.name}', got {landmarks.shape}")
    valid = np.ones(num_landmarks, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != (num_landmarks,):
        raise ValueError(f"valid must be ({num_landmarks},), got {valid.shape}")
    return image, landmarks, valid


def draw_views(
    cfg: ViewConfig, num_landmarks: int, size_in: tuple[int, int], count: int, generator: torch.Generator
) -> ViewDraws:
    """The random numbers of every view of ``count`` images of ``size_in = (height, width)``, on the generator's device.

    A dozen vectorised draws whatever the number of views, in a fixed order (crop boxes, flips, jitter, local ids,
    albumentations seeds, photometric parameters) whatever the options, so switching photometry or jitter off leaves
    every other number unchanged. Both view paths (`LandmarkViews` in the loader workers, one image at a time, and
    `lafs.device_views` on the accelerator, a batch at a time) take their numbers from here.
    """
    device = generator.device
    height, width = size_in
    views = NUM_GLOBAL + cfg.num_local
    scale = torch.tensor([cfg.global_scale] * NUM_GLOBAL + [cfg.local_scale] * cfg.num_local, device=device)
    boxes = sample_crop_boxes(height, width, scale.expand(count, views, 2), cfg.ratio, generator)
    flips = torch.rand((count, views), generator=generator, device=device) < cfg.flip_prob
    jitter = torch.randn((count, views, num_landmarks, 2), generator=generator, device=device) * cfg.jitter_std
    local_ids = torch.randint(
        num_landmarks, (count, cfg.num_local, cfg.local_landmarks), generator=generator, device=device
    )
    seeds = torch.randint(_SEED_BOUND, (count, views), generator=generator, device=device)
    photometric = draw_photometric(cfg, count, generator)
    return ViewDraws(view_maps(boxes, flips, cfg.image_size), jitter, local_ids, seeds, photometric)


def draw_photometric(cfg: ViewConfig, count: int, generator: torch.Generator) -> torch.Tensor:
    """Per-view parameters (count, V, `NUM_PARAMS`) of the DINO/LAFS photometric recipe for `apply_photometric`.

    Views 0 and 1 are the globals (blur p ``blur_prob[0]`` / ``[1]``, only view 1 may be solarised), then locals.
    """
    device = generator.device
    views = NUM_GLOBAL + cfg.num_local
    shape = (count, views)
    coins = torch.rand((*shape, 4), generator=generator, device=device)  # colour jitter, grey, blur, solarize
    strength = torch.tensor(COLOR_JITTER, device=device)
    low = torch.cat([1 - strength[:3], -strength[3:]])
    factors = _uniform(low, torch.cat([1 + strength[:3], strength[3:]]), (*shape, 4), generator)
    order = torch.rand((*shape, 4), generator=generator, device=device).argsort(-1)  # a random permutation per view
    sigma = _uniform(BLUR_SIGMA[0], BLUR_SIGMA[1], shape, generator)
    params = torch.tensor(IDENTITY, device=device).expand(*shape, -1).clone()
    if not cfg.photometric:
        return params
    jittered = coins[..., 0] < cfg.color_jitter_prob
    params[..., JITTER] = jittered.float()
    params[..., BRIGHTNESS : HUE + 1] = torch.where(jittered[..., None], factors, params[..., BRIGHTNESS : HUE + 1])
    params[..., ORDER] = torch.where(jittered[..., None], order.float(), params[..., ORDER])
    params[..., GREY] = (coins[..., 1] < cfg.grayscale_prob).float()
    blur = tuple(cfg.blur_prob)
    blur_prob = torch.tensor(blur[:NUM_GLOBAL] + blur[NUM_GLOBAL:] * cfg.num_local, device=device)
    params[..., SIGMA] = torch.where(coins[..., 2] < blur_prob, sigma, 0.0)
    second_global = torch.arange(views, device=device) == 1  # DINO solarises the second global view only
    params[..., SOLARIZE] = ((coins[..., 3] < cfg.solarize_prob) & second_global).float()
    return params


class LandmarkViews:
    """Makes the 2 global + N local views of one face image (see the module docstring for the recipe)."""

    def __init__(self, cfg: ViewConfig, landmark_set: str) -> None:
        cfg.validate()
        self.cfg = cfg
        self.landmark_set = get_landmark_set(landmark_set)
        self.flip_permutation = np.asarray(self.landmark_set.flip_permutation, dtype=np.int64)
        self._pipelines: list[A.Compose] | None = None
        if cfg.photometric:
            blur = cfg.blur_prob
            self._pipelines = [
                _photometric(blur[0], 0.0, cfg),  # global 1: always blurred
                _photometric(blur[1], cfg.solarize_prob, cfg),  # global 2: rarely blurred, sometimes solarised
                _photometric(blur[2], 0.0, cfg),  # locals
            ]

    @property
    def num_landmarks(self) -> int:
        return self.landmark_set.num_landmarks

    def __call__(
        self,
        image: np.ndarray,
        landmarks: np.ndarray,
        rng: np.random.Generator,
        valid: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Views of an H x W x 3 uint8 RGB image whose (K, 2) landmarks are in its pixels; see the module docstring.

        Returns ``global_images`` (2, S, S, 3) uint8, ``global_landmarks`` (2, K, 2) float32, ``global_valid`` (2, K)
        bool, ``local_images`` (N, S, S, 3) uint8, ``local_landmarks`` (N, k, 2) float32, ``local_ids`` (N, k) int64
        (landmark ids, for position embeddings), ``local_valid`` (N, k) bool.
        """
        image, landmarks, valid = check_face(image, landmarks, valid, self.landmark_set)
        # One draw from the caller's generator seeds the torch generator of all the view numbers.
        generator = torch.Generator().manual_seed(int(rng.integers(_SEED_BOUND)))
        draws = draw_views(self.cfg, self.num_landmarks, image.shape[:2], 1, generator)
        return self.render(image, landmarks, draws, valid)

    def render(
        self, image: np.ndarray, landmarks: np.ndarray, draws: ViewDraws, valid: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """The views of one image given its numbers (`draw_views` with a count of 1); see `__call__`."""
        cfg = self.cfg
        num_landmarks = self.num_landmarks
        image, landmarks, valid = check_face(image, landmarks, valid, self.landmark_set)
        size, num_local, subset = cfg.image_size, cfg.num_local, cfg.local_landmarks
        maps, jitter = draws.maps[0].double().cpu().numpy(), draws.jitter[0].cpu().numpy()
        local_ids, seeds = draws.local_ids[0].cpu().numpy(), draws.seeds[0].tolist()
        out = {
            "global_images": np.empty((NUM_GLOBAL, size, size, 3), dtype=np.uint8),
            "global_landmarks": np.empty((NUM_GLOBAL, num_landmarks, 2), dtype=np.float32),
            "global_valid": np.empty((NUM_GLOBAL, num_landmarks), dtype=bool),
            "local_images": np.empty((num_local, size, size, 3), dtype=np.uint8),
            "local_landmarks": np.empty((num_local, subset, 2), dtype=np.float32),
            "local_ids": local_ids,
            "local_valid": np.empty((num_local, subset), dtype=bool),
        }
        for view in range(NUM_GLOBAL + num_local):
            matrix = maps[view]
            view_image = warp_image(image, matrix, size)
            points, point_valid = move_landmarks(landmarks, valid, matrix, self.flip_permutation)
            points = (points + jitter[view]).astype(np.float32)
            if view < NUM_GLOBAL:
                out["global_landmarks"][view] = points
                out["global_valid"][view] = point_valid
            else:
                ids = local_ids[view - NUM_GLOBAL]
                out["local_landmarks"][view - NUM_GLOBAL] = points[ids]
                out["local_valid"][view - NUM_GLOBAL] = point_valid[ids]
            if self._pipelines is not None:
                pipeline = self._pipelines[min(view, NUM_GLOBAL)]
                pipeline.set_random_state(np.random.default_rng(seeds[view]), random.Random(seeds[view]))
                view_image = pipeline(image=view_image)["image"]
            if view < NUM_GLOBAL:
                out["global_images"][view] = view_image
            else:
                out["local_images"][view - NUM_GLOBAL] = view_image
        return out


class PretrainViews(Dataset):
    """A face data set seen through `LandmarkViews`: item i is its views plus ``label`` and ``index``.

    Item i of epoch e uses ``np.random.default_rng(np.random.SeedSequence([seed, e, i]))``, so its views are a pure
    function of (seed, epoch, i): identical in any DataLoader worker, in any order, and after resuming a run, with no
    RNG state to checkpoint. Call `set_epoch` at the start of every epoch; with ``persistent_workers=True`` the
    workers keep the copy they were started with, so set the epoch before each loader iteration is created or keep
    workers non-persistent.

    Base items are dicts with ``image``, ``landmarks``, optional ``landmark_valid``, ``label`` and ``index``.
    """

    def __init__(self, base: Any, views: LandmarkViews, seed: int = 0) -> None:
        seed = operator.index(seed)
        if seed < 0:
            raise ConfigError(f"views seed must be non-negative, got {seed}")
        self.base = base
        self.views = views
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        epoch = operator.index(epoch)
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = operator.index(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        item = self.base[i]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, i]))
        out: dict[str, Any] = self.views(item["image"], item["landmarks"], rng, item.get("landmark_valid"))
        out["label"] = item["label"]
        out["index"] = item["index"]
        return out


_IMAGE_KEYS = ("global_images", "local_images")
_ARRAY_KEYS = ("global_landmarks", "global_valid", "local_landmarks", "local_ids", "local_valid")


def collate_views(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack `PretrainViews` items into a batch dict.

    ``global_images`` (B, 2, 3, S, S) and ``local_images`` (B, N, 3, S, S) stay uint8 (channels first);
    ``global_landmarks`` (B, 2, K, 2) float32, ``global_valid`` (B, 2, K) bool, ``local_landmarks`` (B, N, k, 2),
    ``local_ids`` (B, N, k) int64, ``local_valid`` (B, N, k) bool, ``label`` and ``index`` (B,) int64.
    """
    if not items:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, torch.Tensor] = {}
    for key in _IMAGE_KEYS:
        stacked = torch.from_numpy(np.stack([item[key] for item in items]))
        batch[key] = stacked.permute(0, 1, 4, 2, 3).contiguous()
    for key in _ARRAY_KEYS:
        batch[key] = torch.from_numpy(np.stack([item[key] for item in items]))
    for key in ("label", "index"):
        batch[key] = torch.as_tensor([int(item[key]) for item in items], dtype=torch.int64)
    return batch
