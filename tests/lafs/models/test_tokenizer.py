import pytest
import torch
from timm.layers import PatchEmbed

from lafs.models import LandmarkPatchEmbed


def grid_centres(size: int = 112, patch: int = 8) -> torch.Tensor:
    """Centres (196, 2) of the regular 14 x 14 patches, row-major, in pixels (pixel j spans [j, j + 1))."""
    centres = torch.arange(size // patch, dtype=torch.float32) * patch + patch / 2
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([x, y], -1).reshape(-1, 2)


def matching_pair(dim: int = 32) -> tuple[PatchEmbed, LandmarkPatchEmbed]:
    torch.manual_seed(0)
    reference = PatchEmbed(img_size=112, patch_size=8, in_chans=3, embed_dim=dim)
    tokenizer = LandmarkPatchEmbed(num_landmarks=196, img_size=112, patch_size=8, embed_dim=dim)
    with torch.no_grad():
        tokenizer.proj.weight.copy_(reference.proj.weight.flatten(1))
        tokenizer.proj.bias.copy_(reference.proj.bias)
    return reference, tokenizer


def test_grid_landmarks_reproduce_patch_embed():
    # float64, so the comparison is about sampling and weight layout, not convolution rounding.
    reference, tokenizer = (m.double() for m in matching_pair())
    images = torch.randn(3, 3, 112, 112, dtype=torch.float64)
    landmarks = grid_centres().double().expand(3, -1, -1)
    torch.testing.assert_close(tokenizer(images, landmarks), reference(images), atol=1e-10, rtol=1e-10)


def test_patch_samples_exact_pixels_at_grid_centres():
    tokenizer = LandmarkPatchEmbed(num_landmarks=1, patch_size=8, embed_dim=4)
    images = torch.arange(3 * 112 * 112, dtype=torch.float32).reshape(1, 3, 112, 112)
    patches = tokenizer.sample_patches(images, torch.tensor([[[20.0, 44.0]]]))
    expected = images[0, :, 40:48, 16:24].reshape(-1)
    torch.testing.assert_close(patches[0, 0], expected)


def test_half_pixel_shift_interpolates_neighbours():
    tokenizer = LandmarkPatchEmbed(num_landmarks=1, patch_size=2, embed_dim=4)
    ramp = torch.arange(16, dtype=torch.float32).expand(1, 1, 16, 16).contiguous()  # value = x - 0.5
    patch = tokenizer.sample_patches(ramp, torch.tensor([[[5.5, 8.0]]]))
    # Samples at x = 5.0 and 6.0 are halfway between pixel centres: values 4.5 and 5.5.
    torch.testing.assert_close(patch[0, 0], torch.tensor([4.5, 5.5, 4.5, 5.5]))


def test_points_outside_the_image_sample_zeros():
    tokenizer = LandmarkPatchEmbed(num_landmarks=1, patch_size=4, embed_dim=4)
    patches = tokenizer.sample_patches(torch.ones(1, 3, 32, 32), torch.tensor([[[-50.0, 10.0]]]))
    assert torch.count_nonzero(patches) == 0


def test_gradient_reaches_landmarks():
    tokenizer = LandmarkPatchEmbed(num_landmarks=5, patch_size=8, embed_dim=8)
    landmarks = (torch.rand(2, 5, 2) * 80 + 16).requires_grad_()
    tokenizer(torch.randn(2, 3, 112, 112), landmarks).square().sum().backward()
    assert landmarks.grad is not None and torch.count_nonzero(landmarks.grad) > 0


@pytest.mark.parametrize("shape", [(2, 5), (2, 5, 3), (3, 5, 2)])
def test_rejects_malformed_landmarks(shape):
    tokenizer = LandmarkPatchEmbed(num_landmarks=5, patch_size=8, embed_dim=8)
    with pytest.raises(ValueError, match="landmarks must be"):
        tokenizer(torch.randn(2, 3, 112, 112), torch.zeros(shape))
