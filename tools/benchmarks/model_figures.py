"""Model figures: the landmark tokenizer against timm's PatchEmbed, evaluation against bare inference, the predictor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from lafs.errors import ConfigError
from tools.benchmarks.common import (
    DEFAULT_ENCODER,
    IMAGE_SIZE,
    PATCH_SIZE,
    encoder_on,
    figure,
    random_images,
    resolve_device,
    result,
    time_side_by_side,
)

# ------------------------------------------------------------------------------------------------------ tokenizer --


def bench_tokenizer(
    encoder: str = DEFAULT_ENCODER, batch: int = 32, repeats: int = 10, warmup: int = 2, device: str = "auto"
) -> dict[str, Any]:
    """Landmark tokenizer vs timm PatchEmbed (forward + backward), and its share of the encoder's training step."""
    from timm.layers import PatchEmbed

    from lafs.models.tokenizer import LandmarkPatchEmbed

    dev = resolve_device(device)
    model = encoder_on(encoder, dev).train()
    width, tokens = int(model.embed_dim), int(model.num_landmarks)
    tokenizer = LandmarkPatchEmbed(tokens, img_size=IMAGE_SIZE, patch_size=PATCH_SIZE, embed_dim=width).to(dev)
    grid = PatchEmbed(img_size=IMAGE_SIZE, patch_size=PATCH_SIZE, in_chans=3, embed_dim=width).to(dev)
    if grid.num_patches != tokens:
        raise ConfigError(f"{encoder} has {tokens} tokens but a {PATCH_SIZE}-pixel grid gives {grid.num_patches}")
    images = random_images(batch, dev)
    landmarks = model.template.expand(batch, -1, -1).contiguous()

    def tokenizer_step() -> None:
        tokenizer.zero_grad(set_to_none=True)
        tokenizer(images, landmarks).square().mean().backward()

    def grid_step() -> None:
        grid.zero_grad(set_to_none=True)
        grid(images).square().mean().backward()

    def encoder_step() -> None:
        model.zero_grad(set_to_none=True)
        model(images).square().mean().backward()

    tok, ref = time_side_by_side(tokenizer_step, grid_step, repeats, warmup, dev)
    tok_again, step = time_side_by_side(tokenizer_step, encoder_step, repeats, warmup, dev)
    figures = [
        figure("tokenizer_vs_patch_embed", tok * 1e3, ref * 1e3, "ms", 1.5, higher_is_better=False),
        figure("tokenizer_share_of_step", tok_again * 1e3, step * 1e3, "ms", 0.10, higher_is_better=False),
    ]
    return result("tokenizer", encoder, batch, repeats, warmup, dev, figures, tokens=tokens, width=width)


# ----------------------------------------------------------------------------------------------------- evaluation --


def bench_evaluation(
    encoder: str = DEFAULT_ENCODER,
    batch: int = 32,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "auto",
    batches: int = 2,
) -> dict[str, Any]:
    """Images/s of `embed_images` (flip and no flip) vs the encoder's bare inference on normalised batches."""
    from lafs.data.collate import normalize_images
    from lafs.evaluation.verification import embed_images

    dev = resolve_device(device)
    model = encoder_on(encoder, dev).eval()
    count = batch * batches
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    ready = [
        normalize_images(torch.from_numpy(images[i : i + batch]).permute(0, 3, 1, 2).contiguous()).to(dev)
        for i in range(0, count, batch)
    ]

    def bare(flip: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                for chunk in ready:
                    model(chunk)
                    if flip:
                        model(torch.flip(chunk, dims=[3]))

        return run

    figures = []
    for flip in (False, True):

        def path(flip: bool = flip) -> None:
            embed_images(model, images, batch_size=batch, flip=flip, device=dev)

        seconds, reference = time_side_by_side(path, bare(flip), repeats, warmup, dev)
        name = "evaluation_flip" if flip else "evaluation_no_flip"
        figures.append(figure(name, count / seconds, count / reference, "images/s", 0.8, higher_is_better=True))
    return result("evaluation", encoder, batch, repeats, warmup, dev, figures, images=count)


# ------------------------------------------------------------------------------------------------------ predictor --


def bench_predictor(
    encoder: str = DEFAULT_ENCODER,
    batch: int = 32,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "auto",
    backbone: str = "mobilenetv3_large_100",
) -> dict[str, Any]:
    """Images/s of the learned landmark predictor vs the encoder's inference rate on the same batch."""
    from lafs.models.landmark_predictor import LandmarkPredictorConfig, build_landmark_predictor

    dev = resolve_device(device)
    model = encoder_on(encoder, dev).eval()
    predictor = build_landmark_predictor(
        LandmarkPredictorConfig(backbone=backbone, landmark_set=model.landmark_set, image_size=IMAGE_SIZE)
    )
    predictor = predictor.to(dev).eval()
    images = random_images(batch, dev)

    def run(module: torch.nn.Module) -> Callable[[], None]:
        def call() -> None:
            with torch.inference_mode():
                module(images)

        return call

    seconds, reference = time_side_by_side(run(predictor), run(model), repeats, warmup, dev)
    figures = [figure("predictor_vs_encoder", batch / seconds, batch / reference, "images/s", None, True)]
    return result("predictor", encoder, batch, repeats, warmup, dev, figures, backbone=backbone)
