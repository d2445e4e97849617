"""Patches views (``views.kind=patches``): the LAFS paper's DINO baseline under the same renderer and model.

The crop boxes, flips and photometry are drawn as for landmark views, but each view's tokens are the regular grid of
p x p patches of the VIEW, not points that follow the face: no jitter, no id permutation on flips (a flipped view
is a new image whose patches keep their places, as in DINO). With a grid landmark set (``grid196``, the 14 x 14
patches of 8 of the 112 crop; `lafs.landmarks.sets`), the tokenizer samples exactly those patches, so
`LandmarkViT` is a plain ViT on patches (tested against timm's ``PatchEmbed``).

Global views carry the whole grid at ``image_size``. Local views are DINO's small crops rendered at a smaller side
(48 = 6 x 6 patches), whose tokens take the position-embedding ids of the global grid by nearest relative position.
DINO instead interpolates the position table to the local grid; our model indexes its table by landmark id (one
embedding per token, the same ids fine-tuning and evaluation use), so nearest-id is our approximation of that
interpolation: each local token gets the embedding of the global patch at the same place in the view.
"""

from __future__ import annotations

import torch

from lafs.errors import ConfigError
from lafs.landmarks.sets import LandmarkSet, get_landmark_set, patch_centres
from lafs.views.config import NUM_GLOBAL, ViewConfig
from lafs.views.draws import ViewDraws


def check_view_set(cfg: ViewConfig, landmark_set: str, key: str = "landmark_set") -> LandmarkSet:
    """The landmark set ``landmark_set`` (named at config ``key``) after checking it fits ``cfg.kind``.

    Patches views need a grid set that tiles the views: its crop side is ``views.image_size`` and its patches
    tile the local side. Landmark views refuse a grid set, whose points do not belong to a face.
    """
    points = get_landmark_set(landmark_set)
    patch = points.patch_size
    if cfg.kind == "landmarks":
        if patch is not None:
            raise ConfigError(f"{key} {landmark_set} is a regular patch grid: its views are views.kind=patches")
        if cfg.local_landmarks > points.num_landmarks:  # drawn with replacement, but more only repeats points
            raise ConfigError(
                f"views.local_landmarks must be at most {landmark_set}'s {points.num_landmarks} points, "
                f"got {cfg.local_landmarks}"
            )
        return points
    if patch is None:
        raise ConfigError(f"{key} {landmark_set} is no patch grid: views.kind=patches needs a grid set (grid196)")
    if cfg.image_size != points.image_size:
        raise ConfigError(
            f"views.image_size must be {points.image_size} for {landmark_set}'s patches (they tile that crop), "
            f"got {cfg.image_size}"
        )
    if cfg.local_side % patch:
        raise ConfigError(
            f"views.local_size must be a multiple of {landmark_set}'s {patch}-pixel patches, got {cfg.local_side}"
        )
    return points


def local_grid_ids(side: int, local_side: int, patch: int) -> torch.Tensor:
    """Position ids (m * m,) int64 of the m x m patches of a local view in the n x n table of a global view.

    Local patch column c (of m) sits at relative position ``(c + 1/2) / m``; it takes the global column whose patch
    contains that position, ``floor((2c + 1) n / 2m)``, i.e. the nearest global patch centre (integer arithmetic,
    so no rounding ties). For 6 of 14: columns 1, 3, 5, 8, 10, 12, mirror-symmetric like the grid.
    """
    n, m = side // patch, local_side // patch
    nearest = (2 * torch.arange(m) + 1) * n // (2 * m)
    return (n * nearest[:, None] + nearest[None, :]).reshape(-1)


def grid_view_landmarks(draws: ViewDraws, landmark_set: LandmarkSet, local_side: int) -> dict[str, torch.Tensor]:
    """The landmark outputs of patches views, in `lafs.views.render.view_landmarks`' layout, on the draws' device.

    Only the draws' shapes matter: ``global_landmarks`` (B, 2, K, 2) are the set's grid (its template);
    ``local_landmarks`` (B, N, K, 2) is each local view's full K-array, as for landmark views (the encoder gathers
    ``local_ids`` (B, N, m * m) from it): entry ``local_ids[j]`` holds the centre of the ``local_side`` view's patch
    j, the other entries the global grid scaled into the view; ids are the nearest global ids (`local_grid_ids`).
    Every token is valid (``*_valid`` all true).
    """
    patch = landmark_set.patch_size
    if patch is None:
        raise ConfigError(f"landmark set '{landmark_set.name}' is no patch grid: patches views need one (grid196)")
    batch, views = draws.maps.shape[:2]
    device, dtype = draws.maps.device, draws.maps.dtype
    num_local = views - NUM_GLOBAL
    grid = torch.tensor(landmark_set.template, dtype=dtype, device=device)  # (K, 2)
    ids = local_grid_ids(landmark_set.image_size, local_side, patch).to(device)
    local = torch.tensor(patch_centres(local_side, patch), dtype=dtype, device=device)  # (k, 2): the tokens
    full = (grid * local_side / landmark_set.image_size).index_copy(0, ids, local)  # (K, 2), full[ids] = local
    valid = torch.ones((batch, views, len(grid)), dtype=torch.bool, device=device)
    return {
        "global_landmarks": grid.repeat(batch, NUM_GLOBAL, 1, 1),
        "global_valid": valid[:, :NUM_GLOBAL],
        "local_landmarks": full.repeat(batch, num_local, 1, 1),
        "local_ids": ids.repeat(batch, num_local, 1),
        "local_valid": valid[:, NUM_GLOBAL:],
    }
