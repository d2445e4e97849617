"""Token geometry figures: how the landmark tokens of the pretraining views cover each view, per ``landmark_fit``.

Views are drawn with the real pretraining recipe (`ViewConfig`'s defaults, `draw_views` + `view_landmarks`) from the
encoder's landmark-set template on aligned 112 x 112 faces, or from the faces of a landmark cache (``--landmarks``).
For each option of `lafs.models.token_geometry` (``none``, ``minmax``, ``minmax_axes``) and each view kind (the 2
globals of K tokens, the N locals of k ids), with the token centres where the encoder would sample:

    coverage   share of the view's pixels inside at least one token's p x p footprint [c - p/2, c + p/2)
    overlap    mean number of footprints over the covered pixels (1 = a tiling)
    off_view   share of tokens whose centre lies outside the view [0, S) x [0, S) (``none`` masks them; the released
               fit puts its lowest coordinate at -0.5, half a pixel off, and the encoder keeps it)

Duplicated local ids count once per token, as the encoder sees them. Figures compare each fit (candidate) with
``none`` (reference), for coverage, overlap and the on-view share (1 - off_view); every value is in the JSON.
``--repeats`` batches of views are drawn.

One timed figure, ``attention_mask_cost``: the encoder's forward + backward (bf16 autocast on CUDA) on a batch of
global views with the attention mask their off-view tokens get under ``none``, against the same tokens with no mask
(the path every-token-valid inputs take: no ``attn_mask`` argument, attention's fastest kernel).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lafs.errors import ConfigError
from lafs.landmarks.cache import LandmarkCache
from lafs.landmarks.sets import get_landmark_set
from lafs.models import EncoderConfig, build_encoder
from lafs.models.token_geometry import LANDMARK_FITS, LandmarkFit, fit_landmarks
from lafs.models.vit import LandmarkViT
from lafs.views import ViewConfig, draw_views, view_landmarks
from tools.benchmarks.common import DEFAULT_ENCODER, figure, random_images, resolve_device, result, time_side_by_side

METRICS = ("coverage", "overlap", "off_view")


def footprint_counts(centres: torch.Tensor, patch: int, size: int) -> torch.Tensor:
    """Per pixel, how many p x p token footprints hold its centre: centres (views, tokens, 2) -> (views, S, S).

    A token centred at c covers the pixels whose centres j + 0.5 lie in [c - p/2, c + p/2): exactly p per axis.
    """
    pixel_centres = torch.arange(size, device=centres.device, dtype=centres.dtype) + 0.5
    low, high = centres[..., None] - patch / 2, centres[..., None] + patch / 2  # (views, tokens, 2, 1)
    covered = ((low <= pixel_centres) & (pixel_centres < high)).to(centres.dtype)  # (views, tokens, 2, S)
    return torch.einsum("vty,vtx->vyx", covered[:, :, 1], covered[:, :, 0])


def geometry_figures(centres: torch.Tensor, patch: int, size: int) -> dict[str, float]:
    """Coverage, overlap and off-view share (see the module docstring) of centres (views, tokens, 2), view means."""
    counts = footprint_counts(centres, patch, size)
    covered = (counts > 0).flatten(1).sum(1).to(centres.dtype)
    inside = ((centres >= 0) & (centres < size)).all(-1)
    return {
        "coverage": (covered / size**2).mean().item(),
        "overlap": (counts.flatten(1).sum(1) / covered.clamp_min(1)).mean().item(),
        "off_view": 1.0 - inside.to(centres.dtype).mean().item(),
    }


def token_centres(
    landmarks: torch.Tensor, valid: torch.Tensor, ids: torch.Tensor | None, fit: LandmarkFit, size: int
) -> torch.Tensor:
    """Where the encoder samples the tokens of views (B, V, K, 2) with masks (B, V, K) and ids (B, V, k) or None,
    under ``fit``: (B * V, K or k, 2)."""
    fitted = fit_landmarks(landmarks.flatten(0, 1), fit, (size, size), valid.flatten(0, 1))
    if ids is None:
        return fitted
    return torch.gather(fitted, 1, ids.flatten(0, 1)[..., None].expand(-1, -1, 2))


def face_landmarks(
    path: Path | None, landmark_set: str, template: torch.Tensor, image_size: int, count: int, seed: int
) -> tuple[torch.Tensor, int]:
    """``count`` faces' landmarks (count, K, 2) and the side of their square images: the template on aligned faces,
    or faces a landmark cache found, drawn with replacement."""
    if path is None:
        return template.expand(count, -1, -1), image_size
    cache = LandmarkCache.open(path)
    if cache.info.landmark_set != landmark_set:
        raise ConfigError(f"--landmarks {path}: landmark set {cache.info.landmark_set}, the encoder's {landmark_set}")
    found = np.flatnonzero(np.asarray(cache.found) & np.asarray(cache.done))
    if not len(found):
        raise ConfigError(f"--landmarks {path}: the cache holds no found face")
    chosen = np.sort(np.random.default_rng(seed).choice(found, size=count))
    return torch.from_numpy(np.asarray(cache.landmarks[chosen], dtype=np.float32)), int(cache.info.image_size)


def mask_cost(
    model: LandmarkViT, landmarks: torch.Tensor, repeats: int, warmup: int, device: torch.device
) -> tuple[float, float, float]:
    """Median seconds of the encoder's forward + backward over landmarks (batch, K, 2) with their in-view mask and
    without any mask, and the share of tokens the mask drops."""
    model = model.to(device).train()
    images = random_images(len(landmarks), device)
    keys = model.embed_tokens(images, landmarks)[1]
    dropped = 0.0 if keys is None else 1.0 - keys[:, 1:].float().mean().item()

    def step(masked: bool) -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            tokens, keys = model.embed_tokens(images, landmarks)
            out = model.norm(model.run_blocks(tokens, keys if masked else None))
        out[:, 0].float().square().mean().backward()

    masked, unmasked = time_side_by_side(lambda: step(True), lambda: step(False), repeats, warmup, device)
    return masked, unmasked, dropped


def bench_token_geometry(
    encoder: str = DEFAULT_ENCODER,
    batch: int = 32,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "auto",
    landmarks: Path | None = None,
) -> dict[str, Any]:
    """Coverage, overlap and off-view share of the pretraining views' tokens under each ``landmark_fit``."""
    dev = resolve_device(device)
    cfg = ViewConfig()
    model = build_encoder(EncoderConfig(name=encoder))
    landmark_set = get_landmark_set(model.landmark_set)
    patch, size = int(model.patch_embed.patch_size[0]), cfg.image_size
    aligned_size = int(model.patch_embed.img_size[0])  # the template's square, the encoder's input
    points, source_size = face_landmarks(
        landmarks, landmark_set.name, model.template, aligned_size, batch * repeats, seed=0
    )
    permutation = torch.tensor(landmark_set.flip_permutation, dtype=torch.int64, device=dev)
    generator = torch.Generator(dev).manual_seed(0)
    sums = {(fit, kind): dict.fromkeys(METRICS, 0.0) for fit in LANDMARK_FITS for kind in ("global", "local")}
    for chunk in points.to(dev).split(batch):
        valid = torch.ones(chunk.shape[:2], dtype=torch.bool, device=dev)
        draws = draw_views(cfg, landmark_set.num_landmarks, (source_size, source_size), len(chunk), generator)
        views = view_landmarks(chunk, valid, draws, permutation)
        for fit in LANDMARK_FITS:
            kinds = {
                "global": token_centres(views["global_landmarks"], views["global_valid"], None, fit, size),
                "local": token_centres(views["local_landmarks"], views["local_valid"], views["local_ids"], fit, size),
            }
            for kind, centres in kinds.items():
                for metric, value in geometry_figures(centres, patch, size).items():
                    sums[fit, kind][metric] += value * len(chunk) / len(points)
    options = {fit: {kind: sums[fit, kind] for kind in ("global", "local")} for fit in LANDMARK_FITS}
    figures = []
    for kind in ("global", "local"):
        none = options["none"][kind]
        for fit in LANDMARK_FITS[1:]:
            ours = options[fit][kind]
            figures += [
                figure(f"{kind}_coverage_{fit}", ours["coverage"], none["coverage"], "of view", None, True),
                figure(f"{kind}_overlap_{fit}", ours["overlap"], none["overlap"], "per pixel", None, False),
                figure(f"{kind}_on_view_{fit}", 1 - ours["off_view"], 1 - none["off_view"], "of tokens", None, True),
            ]
    masked, unmasked, dropped = mask_cost(model, views["global_landmarks"][:, 0], repeats, warmup, dev)
    figures.append(figure("attention_mask_cost", masked * 1e3, unmasked * 1e3, "ms", None, False))
    source = str(landmarks) if landmarks is not None else f"{landmark_set.name} template"
    extras: dict[str, Any] = {"landmarks": source, "timed_tokens_masked": dropped}
    extras["views"] = {"num_local": cfg.num_local, "local_landmarks": cfg.local_landmarks}
    return result("token-geometry", encoder, batch, repeats, warmup, dev, figures, **extras, options=options)
