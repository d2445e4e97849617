"""Views whose landmarks a frozen landmark predictor places (LAFS pretraining with the released landmark network).

The paper's pretraining places every token with its landmark CNN run on each view: a view's landmarks are the
network's prediction on the view, before photometric augmentation, plus Gaussian jitter (σ = ``views.jitter_std``),
and a local view takes k of them (the view's ids, drawn with replacement). Predicted landmarks are the network's own
points, slot k meaning its k-th output: a mirrored view is predicted as it is, with no left/right swap.

`views_with_predicted_landmarks` makes or completes a view batch that way: views made on the device are rendered
from the same draws as `DeviceViews` and the network sees each one before photometry, exactly as LAFS; views made
by loader workers arrive photometrically augmented, so the network sees them augmented and the jitter is drawn here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lafs.data.collate import normalize_images
from lafs.views.config import NUM_GLOBAL, ViewConfig
from lafs.views.device import DeviceViews
from lafs.views.draws import draw_views
from lafs.views.render import to_uint8, warp_views


def predicted_view_landmarks(
    predictor: nn.Module, views: torch.Tensor, jitter: torch.Tensor, local_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The landmark entries of a view batch, predicted on ``views`` by ``predictor`` (without gradients).

    ``views`` (B, V, 3, S, S) normalised to [-1, 1], the globals first; ``jitter`` (B, V, K, 2) pixels added to the
    predictions; ``local_ids`` (B, N, k). Returns ``global_landmarks`` (B, 2, K, 2) and ``local_landmarks``
    (B, N, K, 2) (each local view's full set: the encoder gathers ``local_ids`` after fitting its token geometry, as
    for `lafs.views.render.view_landmarks`), ``local_ids``, and ``global_valid`` / ``local_valid``, all true. The
    predictor runs in float32 outside autocast: its min-max rescaling would lose fractions of a pixel in half
    precision.
    """
    with torch.no_grad(), torch.autocast(views.device.type, enabled=False):
        points = predictor(views.flatten(0, 1).float()).unflatten(0, views.shape[:2]) + jitter
    valid = torch.ones_like(points[..., 0], dtype=torch.bool)
    return {
        "global_landmarks": points[:, :NUM_GLOBAL],
        "global_valid": valid[:, :NUM_GLOBAL],
        "local_landmarks": points[:, NUM_GLOBAL:],
        "local_ids": local_ids,
        "local_valid": valid[:, NUM_GLOBAL:],
    }


def views_with_predicted_landmarks(
    predictor: nn.Module,
    batch: Mapping[str, torch.Tensor],
    generator: torch.Generator,
    cfg: ViewConfig,
    device_views: DeviceViews | None = None,
) -> dict[str, torch.Tensor]:
    """A view batch (the layout of `DeviceViews.render`) whose landmarks ``predictor`` placed.

    With ``device_views``, ``batch`` is a face batch and its views are made here from ``generator``'s draws (the
    same numbers `DeviceViews` would draw); without, ``batch`` holds loader-made views and ``generator`` draws the
    jitter. The landmark count K is the predictor's ``num_landmarks``.
    """
    if device_views is not None:
        images = batch["image"]
        size = (images.shape[-2], images.shape[-1])
        draws = draw_views(cfg, device_views.landmark_set.num_landmarks, size, len(images), generator)
        rendered = device_views.render(batch, draws)
        clean = normalize_images(to_uint8(warp_views(images, draws.maps, cfg.image_size)))
        return {**rendered, **predicted_view_landmarks(predictor, clean, draws.jitter, draws.local_ids)}
    pixels = [batch[key] for key in ("global_images", "local_images")]
    views = torch.cat([normalize_images(p) if p.dtype == torch.uint8 else p for p in pixels], dim=1)
    shape = (*views.shape[:2], batch["global_landmarks"].shape[2], 2)
    jitter = torch.randn(shape, generator=generator, device=views.device) * cfg.jitter_std
    return {**batch, **predicted_view_landmarks(predictor, views, jitter, batch["local_ids"])}
