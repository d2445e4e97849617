"""`LandmarkViews`: the 2 global + N local LAFS views of one face image, rendered in a loader worker.

Per image (arXiv 2403.08161; ``docs/losses.md`` section 5): 2 *global* views carrying all K landmarks and N *local*
views carrying k landmark ids drawn uniformly with replacement. Local views are local because of their landmark subset,
not because they are small crops: both kinds use RandomResizedCrop to the output size with scale (0.4, 1) and ratio
(3/4, 4/3), then a horizontal flip with p = 0.5 that swaps left/right landmark ids (`lafs.views.geometry`). Gaussian
landmark jitter (std ``jitter_std`` view pixels per coordinate) is added to every view's landmarks; a local view
keeps all K jittered points and the encoder gathers its k ids (after fitting its token geometry to the K).
Photometry is DINO's recipe (`lafs.views.photometric`) and never touches landmarks. That is
``views.kind=landmarks``; ``patches`` views (the DINO baseline) put each view's tokens on its patch grid instead
(`lafs.views.patches`).

Rendering is `render_views`, the renderer `DeviceViews` runs on the accelerator, with a batch of one image; the views
are rounded to uint8 for the trip to the training process. One draw from the caller's ``np.random.Generator`` seeds
all of an image's numbers (`draw_views`).
"""

from __future__ import annotations

import numpy as np
import torch

from lafs.landmarks.sets import LandmarkSet
from lafs.views.config import ViewConfig
from lafs.views.draws import ViewDraws, draw_views
from lafs.views.patches import check_view_set
from lafs.views.render import render_views, to_uint8

_SEED_BOUND = 2**62  # the per-image seed is drawn below this (torch.Generator takes 64-bit seeds)


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


class LandmarkViews:
    """Renders the 2 global + N local views of one face image (see the module docstring)."""

    def __init__(self, cfg: ViewConfig, landmark_set: str) -> None:
        cfg.validate()
        self.cfg = cfg
        self.landmark_set = check_view_set(cfg, landmark_set)

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
        """Views of an H x W x 3 uint8 RGB image whose (K, 2) landmarks are in its pixels.

        Returns ``global_images`` (2, S, S, 3) uint8, ``global_landmarks`` (2, K, 2) float32, ``global_valid`` (2, K)
        bool, ``local_images`` (N, s, s, 3) uint8, ``local_landmarks`` (N, K, 2) float32 (each local view's full
        set), ``local_ids`` (N, k) int64 (the ids of its tokens), ``local_valid`` (N, K) bool.
        """
        image, landmarks, valid = check_face(image, landmarks, valid, self.landmark_set)
        generator = torch.Generator().manual_seed(int(rng.integers(_SEED_BOUND)))
        draws = draw_views(self.cfg, self.num_landmarks, image.shape[:2], 1, generator)
        return self.render(image, landmarks, draws, valid)

    def render(
        self, image: np.ndarray, landmarks: np.ndarray, draws: ViewDraws, valid: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """The views of one image given its numbers (`draw_views` with a count of 1, on the CPU); see `__call__`."""
        image, landmarks, valid = check_face(image, landmarks, valid, self.landmark_set)
        out = render_views(
            torch.tensor(image).permute(2, 0, 1)[None],  # copies: decoded arrays may be read-only
            torch.tensor(landmarks)[None],
            torch.tensor(valid)[None],
            draws,
            self.cfg,
            self.landmark_set,
        )
        # Channels last, as images are handed around in numpy; collate_views makes batches channels first.
        for key in ("global_images", "local_images"):
            out[key] = to_uint8(out[key]).permute(0, 1, 3, 4, 2)
        return {key: value[0].numpy() for key, value in out.items()}
