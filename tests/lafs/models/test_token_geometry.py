"""Token geometry: the released LAFS min-max fit in our pixel convention, and which tokens are valid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lafs.models.token_geometry import fit_landmarks, minmax_fit, token_validity
from lafs.models.tokenizer import LandmarkPatchEmbed

SIZE = (112, 112)
POINTS = torch.tensor([[[10.0, 20.0], [30.0, 60.0], [50.0, 40.0]]])


def test_minmax_is_one_range_over_x_and_y_onto_the_released_span():
    # One min (10) and one max (60) over all six numbers, spread 50, onto the released [0, 111], then -0.5 px:
    # x 10, 30, 50 -> 0, 44.4, 88.8; y 20, 60, 40 -> 22.2, 111, 66.6.
    expected = torch.tensor([[[-0.5, 21.7], [43.9, 110.5], [88.3, 66.1]]])
    torch.testing.assert_close(minmax_fit(POINTS, SIZE), expected)
    torch.testing.assert_close(fit_landmarks(POINTS, "minmax", SIZE), expected)


def test_minmax_axes_spans_each_axis():
    # x 10..50 and y 20..60 each onto [0, 111] - 0.5.
    expected = torch.tensor([[[-0.5, -0.5], [55.0, 110.5], [110.5, 55.0]]])
    torch.testing.assert_close(fit_landmarks(POINTS, "minmax_axes", SIZE), expected)


def test_fit_is_per_image_and_none_keeps_the_points():
    batch = torch.cat([POINTS, POINTS * 0.5 + 7.0])  # the same shape moved and shrunk: the same fit
    fitted = minmax_fit(batch, SIZE)
    torch.testing.assert_close(fitted[1], fitted[0])
    assert fitted.amin().item() == -0.5 and fitted.amax().item() == 110.5
    assert fit_landmarks(batch, "none", SIZE) is batch


def test_released_range_samples_the_released_pixels():
    """LAFS's landmark L in [0, 111] samples grid (L + o) / 56 - 1 for o = -4..3 (align_corners=False): the same
    pixels as our tokenizer at L - 0.5, which is what minmax_fit returns."""
    torch.manual_seed(0)
    images = torch.randn(1, 3, 112, 112, dtype=torch.float64)  # float64: compare sampling, not grid rounding
    released = torch.tensor([[[0.0, 111.0], [37.3, 5.0], [111.0, 60.25]]], dtype=torch.float64)
    offsets = torch.arange(-4.0, 4.0, dtype=torch.float64)
    oy, ox = torch.meshgrid(offsets, offsets, indexing="ij")  # row-major like ours (LAFS stores patches transposed)
    points = released[:, :, None, :] + torch.stack([ox, oy], -1).reshape(-1, 2)
    theirs = F.grid_sample(images, points / 56.0 - 1.0, mode="bilinear", padding_mode="zeros", align_corners=False)
    tokenizer = LandmarkPatchEmbed(num_landmarks=3, patch_size=8, embed_dim=4).double()
    ours = tokenizer.sample_patches(images, released - 0.5)
    torch.testing.assert_close(ours, theirs.permute(0, 2, 1, 3).flatten(2))
    # minmax_fit maps a set whose extremes are 0 and 111 (its own released range) exactly there.
    torch.testing.assert_close(minmax_fit(released, SIZE), released - 0.5)


def test_only_valid_points_set_the_range():
    far = torch.cat([POINTS, torch.tensor([[[500.0, -300.0]]])], dim=1)
    valid = torch.tensor([[True, True, True, False]])
    torch.testing.assert_close(minmax_fit(far, SIZE, valid)[:, :3], minmax_fit(POINTS, SIZE))
    assert not torch.allclose(minmax_fit(far, SIZE)[:, :3], minmax_fit(POINTS, SIZE))


def test_degenerate_sets_stay_finite():
    nothing_valid = minmax_fit(POINTS, SIZE, torch.zeros(1, 3, dtype=torch.bool))
    one_point = minmax_fit(torch.full((1, 3, 2), 7.0), SIZE)
    assert torch.isfinite(nothing_valid).all() and torch.isfinite(one_point).all()


def test_a_token_is_valid_when_its_landmark_is_and_its_centre_is_inside():
    # [0, W) x [0, H): 0 and 111.99 are inside, 112 and -0.01 are not (pixel j spans [j, j + 1)).
    points = torch.tensor([[[0.0, 0.0], [111.99, 50.0], [112.0, 50.0], [50.0, -0.01], [50.0, 50.0], [60.0, 60.0]]])
    data = torch.tensor([[True, True, True, True, True, False]])
    inside = torch.tensor([[True, True, False, False, True, True]])
    assert torch.equal(token_validity(points, "none", SIZE), inside)
    assert torch.equal(token_validity(points, "none", SIZE, data), inside & data)
    # A fit places every centre on the crop by construction: only the data mask is left, or none at all.
    assert torch.equal(token_validity(points, "minmax", SIZE, data), data)
    assert token_validity(points, "minmax", SIZE) is None


@pytest.mark.parametrize("size", [(112, 112), (96, 128)])
def test_fitted_patches_cover_the_released_span(size):
    height, width = size
    fitted = minmax_fit(torch.rand(2, 50, 2) * 100, size, joint=False)
    for axis, extent in ((0, width), (1, height)):
        assert fitted[..., axis].amin().item() == pytest.approx(-0.5)
        assert fitted[..., axis].amax().item() == pytest.approx(extent - 1.5)
