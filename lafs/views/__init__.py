"""Landmark-aware LAFS views: config, random draws, geometry (crop, flip + id permutation), photometry, renderers.

One recipe, one set of draws and one renderer (`render_views`), run either in loader workers (`LandmarkViews` +
`PretrainViews` + `collate_views`) or on the training device in batches (`DeviceViews`), as ``ViewConfig.make_on`` /
`views_on_accelerator` decide. ``ViewConfig.kind=patches`` makes the DINO baseline's views instead (tokens on each
view's regular patch grid, `lafs.views.patches`) through the same draws and renderer.
"""

from lafs.views.config import NUM_GLOBAL, ViewConfig, views_on_accelerator
from lafs.views.dataset import PretrainViews, collate_views
from lafs.views.device import DeviceViews
from lafs.views.draws import ViewDraws, draw_photometric, draw_views, sample_crop_boxes
from lafs.views.geometry import (
    flip_batch,
    flip_map,
    invert_linear,
    is_flipping,
    map_landmarks,
    move_landmarks,
    swap_sides,
    view_maps,
)
from lafs.views.patches import check_view_set, grid_view_landmarks, local_grid_ids
from lafs.views.photometric import NUM_PARAMS, apply_photometric
from lafs.views.render import render_views, to_uint8, view_landmarks, warp_views
from lafs.views.worker import LandmarkViews, check_face

__all__ = [
    "NUM_GLOBAL",
    "NUM_PARAMS",
    "DeviceViews",
    "LandmarkViews",
    "PretrainViews",
    "ViewConfig",
    "ViewDraws",
    "apply_photometric",
    "check_face",
    "check_view_set",
    "collate_views",
    "draw_photometric",
    "draw_views",
    "flip_batch",
    "flip_map",
    "grid_view_landmarks",
    "invert_linear",
    "is_flipping",
    "local_grid_ids",
    "map_landmarks",
    "move_landmarks",
    "render_views",
    "sample_crop_boxes",
    "swap_sides",
    "to_uint8",
    "view_landmarks",
    "view_maps",
    "views_on_accelerator",
    "warp_views",
]
