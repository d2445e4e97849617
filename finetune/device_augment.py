"""Fine-tuning augmentation of whole batches on the accelerator: the released LAFS recipe as switches, and mixup.

Loader workers only decode; `augment_batch` takes a micro-batch of uint8 images (B, 3, H, W) on its device, with
their landmarks, and returns normalised float images and moved landmarks. The released training transforms
(image_iter.py ``FaceDataset`` with train_largescale.py's settings) in their order:

1. horizontal flip (``flip``; landmark ids follow the mirror through the landmark set's permutation);
2. the face RandAugment of util/rand_aa_face.py (``randaugment`` = its magnitude; `finetune.randaugment`);
3. RandomResizedCrop back to the input size (``crop_scale`` = its area range; aspect ratio 3/4 .. 4/3);
4. ColorJitter (``color_jitter`` = the strength of brightness, contrast, saturation and hue, in a random order);
5. RandomErasing (``erasing`` = its probability; 2-10 % of the image, aspect 0.3 .. 3.3, set to black);
6. then, on the normalised batch, mixup (`BatchMixup`).

Every geometric op (flip, RandAugment's rotate / shear / translate, the crop) is one 2 x 3 map per image; they compose
into a single map, so each image is resampled once (`lafs.views.render.warp_views`, the pretraining views' warp)
and its landmarks move through the same map (`lafs.views.geometry.map_landmarks`, which swaps left/right ids of
mirrored images). Colour ops run after the warp, in their order, on float pixels in [0, 1] (no rounding to 8 bits
between ops). Two departures from the released pipeline follow from the single warp: a RandAugment colour op drawn
before a geometric one also recolours the fill grey, and images are resampled once rather than once per op (sharper).
With only flips on (the default), images are mirrored exactly, with no resampling.

All random numbers come from one generator in a fixed order (`draw_augment`), so a seed reproduces a batch and
switching one op off leaves the others' numbers unchanged. Landmarks are optional: with a landmark predictor the
encoder reads the augmented image itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.data import Mixup

from finetune.randaugment import FILL, RandAugmentDraws, apply_colour_ops, draw_randaugment, geometric_maps
from lafs.data.collate import PIXEL_MEAN, PIXEL_STD
from lafs.errors import ConfigError
from lafs.views.draws import sample_crop_boxes
from lafs.views.geometry import flip_batch, map_landmarks, view_maps
from lafs.views.photometric import BRIGHTNESS, HUE, IDENTITY, JITTER, ORDER, apply_photometric
from lafs.views.render import warp_views

CROP_RATIO = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop's default aspect-ratio range (LAFS keeps it)
ERASE_AREA = (0.02, 0.1)  # LAFS: RandomErasing(scale=(0.02, 0.1))
ERASE_RATIO = (0.3, 3.3)  # torchvision RandomErasing's default height / width range


@dataclass
class AugmentConfig:
    flip: float = 0.5  # horizontal-flip probability per image (arcface_torch and LAFS)
    # RandomResizedCrop area-fraction range, resized back to the input size; (1, 1) = off (LAFS: (0.9, 1.0))
    crop_scale: tuple[float, float] = (1.0, 1.0)
    # ColorJitter strength: brightness, contrast and saturation factors in 1 +- s, hue shift in +- s; 0 = off (LAFS 0.1)
    color_jitter: float = 0.0
    erasing: float = 0.0  # RandomErasing probability per image (black box, 2-10 % of the area); 0 = off (LAFS 0.5)
    # Magnitude (0..10) of the released face RandAugment, 2 ops per image; 0 = off (LAFS: 1 on WebFace4M, 2 on MS1MV3)
    randaugment: int = 0
    mixup_prob: float = 0.1  # share of batches mixed (LAFS on WebFace4M; 0.2 on MS1MV3); 0 = off
    mixup_alpha: float = 0.2  # Beta(alpha, alpha) mixing weight (LAFS)

    def validate(self) -> None:
        for key in ("flip", "erasing", "mixup_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"augment.{key} must be a probability in [0, 1], got {getattr(self, key)}")
        if self.mixup_alpha <= 0:
            raise ConfigError(f"augment.mixup_alpha must be > 0, got {self.mixup_alpha}")
        scale = self.crop_scale
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ConfigError(f"augment.crop_scale must be (low, high) with 0 < low <= high <= 1, got {list(scale)}")
        if not 0 <= self.color_jitter <= 0.5:
            raise ConfigError(f"augment.color_jitter must lie in [0, 0.5] (hue turns), got {self.color_jitter}")
        if not 0 <= self.randaugment <= 10:
            raise ConfigError(f"augment.randaugment must be a magnitude in 0..10 (0 = off), got {self.randaugment}")

    @property
    def crops(self) -> bool:
        return tuple(self.crop_scale) != (1.0, 1.0)


@dataclass
class AugmentDraws:
    """The augmentation numbers of a batch of B images (see `draw_augment`)."""

    flips: torch.Tensor  # (B,) bool
    randaugment: RandAugmentDraws
    crop_boxes: torch.Tensor  # (B, 4) (x0, y0, w, h) in pixels of the (RandAugmented) image
    jitter: torch.Tensor  # (B, NUM_PARAMS) `lafs.views.photometric` parameters: ColorJitter only
    erased: torch.Tensor  # (B,) bool
    erase_boxes: torch.Tensor  # (B, 4) (x0, y0, w, h) in output pixels


def draw_augment(cfg: AugmentConfig, count: int, size: tuple[int, int], generator: torch.Generator) -> AugmentDraws:
    """The numbers of ``count`` images of ``size = (height, width)``, on the generator's device, in a fixed order
    whatever the switches (an op switched off still draws its numbers, so the others' stay the same)."""
    device = generator.device
    height, width = size
    flips = torch.rand(count, generator=generator, device=device) < cfg.flip
    randaugment = draw_randaugment(count, cfg.randaugment, generator)
    scale = torch.tensor(cfg.crop_scale, dtype=torch.float32, device=device).expand(count, 2)
    crop_boxes = sample_crop_boxes(height, width, scale, CROP_RATIO, generator)
    strength = cfg.color_jitter
    factors = torch.rand((count, 4), generator=generator, device=device) * 2 - 1  # in [-1, 1)
    order = torch.rand((count, 4), generator=generator, device=device).argsort(-1)  # torchvision's random op order
    jitter = torch.tensor(IDENTITY, device=device).expand(count, -1).clone()
    jitter[:, JITTER] = 1.0
    jitter[:, BRIGHTNESS:HUE] = 1 + strength * factors[:, :3]
    jitter[:, HUE] = strength * factors[:, 3]
    jitter[:, ORDER] = order.float()
    erased = torch.rand(count, generator=generator, device=device) < cfg.erasing
    area = torch.tensor(ERASE_AREA, device=device).expand(count, 2)
    # sample_crop_boxes draws width / height; RandomErasing's ratio is height / width.
    erase_boxes = sample_crop_boxes(height, width, area, (1 / ERASE_RATIO[1], 1 / ERASE_RATIO[0]), generator)
    return AugmentDraws(flips, randaugment, crop_boxes, jitter, erased, erase_boxes)


def augment_batch(
    images: torch.Tensor,
    landmarks: torch.Tensor | None,
    cfg: AugmentConfig,
    flip_permutation: torch.Tensor,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 images (B, 3, H, W) and their landmarks (B, K, 2) in pixels (or None) -> float images in [-1, 1] and
    moved landmarks (same shapes). Numbers from ``generator`` (on the images' device); ``flip_permutation`` (K,)."""
    draws = draw_augment(cfg, images.shape[0], (images.shape[-2], images.shape[-1]), generator)
    return apply_augment(images, landmarks, draws, cfg, flip_permutation)


def apply_augment(
    images: torch.Tensor,
    landmarks: torch.Tensor | None,
    draws: AugmentDraws,
    cfg: AugmentConfig,
    flip_permutation: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`augment_batch` given its numbers: the ops ``cfg`` switches on (module docstring), in the released order."""
    if cfg.crops or cfg.randaugment:
        pixels, landmarks = _warp(images, landmarks, draws, cfg, flip_permutation)
    else:  # no geometric op but flips: mirrored exactly, no resampling
        images, landmarks = _flip(images, landmarks, draws.flips, flip_permutation)
        pixels = images.float() / 255.0
    if cfg.randaugment:
        pixels = apply_colour_ops(pixels, draws.randaugment)
    if cfg.color_jitter:
        pixels = apply_photometric(pixels, draws.jitter)
    if cfg.erasing:
        pixels = torch.where(draws.erased[:, None, None, None] & _inside(draws.erase_boxes, pixels.shape), 0.0, pixels)
    return (pixels - PIXEL_MEAN) / PIXEL_STD, landmarks


def _augment_maps(draws: AugmentDraws, cfg: AugmentConfig, size: tuple[int, int]) -> torch.Tensor:
    """(B, 2, 3) maps from input pixels to output pixels: flip, then RandAugment's geometric ops, then the crop."""
    height, width = size
    count = draws.flips.shape[0]
    device = draws.flips.device
    maps = torch.eye(3, device=device).repeat(count, 1, 1)
    mirror = torch.tensor([[-1.0, 0.0, width], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], device=device)
    maps = torch.where(draws.flips[:, None, None], mirror, maps)
    if cfg.randaugment:
        maps = geometric_maps(draws.randaugment, height, width) @ maps
    if cfg.crops:
        no_flip = torch.zeros(count, dtype=torch.bool, device=device)
        crop = view_maps(draws.crop_boxes, no_flip, width)  # (square output, the input's width)
        maps = torch.cat([crop, crop.new_tensor([0.0, 0.0, 1.0]).expand(count, 1, 3)], 1) @ maps
    return maps[:, :2]


def _warp(
    images: torch.Tensor,
    landmarks: torch.Tensor | None,
    draws: AugmentDraws,
    cfg: AugmentConfig,
    flip_permutation: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Float images (B, 3, S, S) in [0, 1] under `_augment_maps` (uncovered pixels take RandAugment's fill grey) and the
    landmarks moved by the same maps."""
    size = images.shape[-1]
    maps = _augment_maps(draws, cfg, (images.shape[-2], size))[:, None]  # one view per image
    pixels = warp_views(images, maps, size)[:, 0]
    covered = warp_views(torch.full_like(images[:, :1], 255), maps, size)[:, 0]  # 1 inside the image, 0 outside
    pixels = pixels + FILL * (1.0 - covered)
    if landmarks is not None:
        valid = torch.ones(landmarks.shape[:2], dtype=torch.bool, device=landmarks.device)
        moved, _ = map_landmarks(maps, landmarks.float(), valid, flip_permutation)
        landmarks = moved[:, 0]
    return pixels, landmarks


def _flip(
    images: torch.Tensor, landmarks: torch.Tensor | None, flips: torch.Tensor, flip_permutation: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images (B, C, H, W) mirrored where ``flips`` (B,) is true, with their landmarks (`flip_batch`) if any."""
    if landmarks is None:
        return torch.where(flips[:, None, None, None], images.flip(-1), images), None
    images, landmarks, _ = flip_batch(images, landmarks, flips, flip_permutation)
    return images, landmarks


def _inside(boxes: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """(B, 1, H, W) bool: the pixels whose centres lie in boxes (B, 4) ``(x0, y0, w, h)``."""
    height, width = shape[-2:]
    x = torch.arange(width, device=boxes.device) + 0.5
    y = torch.arange(height, device=boxes.device) + 0.5
    x0, y0, w, h = (value[:, None, None, None] for value in boxes.unbind(-1))
    return (x >= x0) & (x < x0 + w) & (y[:, None] >= y0) & (y[:, None] < y0 + h)


class BatchMixup:
    """timm's batch mixup (each image mixed with the batch's mirror-order partner) plus what the losses need."""

    def __init__(self, cfg: AugmentConfig, num_classes: int) -> None:
        self.mixup = Mixup(
            mixup_alpha=cfg.mixup_alpha, prob=cfg.mixup_prob, label_smoothing=0.0, num_classes=num_classes
        )

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, landmarks: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """(images, soft labels (B, C) or None if not mixed, dominant labels (B,), the dominant image's landmarks)."""
        if images.shape[0] % 2:
            raise ConfigError("mixup needs an even optim.batch_size")
        images, soft = self.mixup(images.clone(), labels)
        own_share = soft.gather(1, labels[:, None]).squeeze(1)
        if torch.all(own_share == 1):
            return images, None, labels, landmarks
        partner = torch.arange(labels.shape[0] - 1, -1, -1, device=labels.device)  # timm pairs i with B - 1 - i
        dominant = own_share >= 0.5
        labels = torch.where(dominant, labels, labels[partner])
        if landmarks is not None:
            landmarks = torch.where(dominant[:, None, None], landmarks, landmarks[partner])
        return images, soft, labels, landmarks
