import numpy as np
import pytest

from lafs.errors import ConfigError
from lafs.landmarks import get_face_mesh, get_landmark_set, landmark_set_names
from lafs.landmarks.align import ARCFACE_TEMPLATE
from lafs.landmarks.mediapipe import five_points_from_mesh

SIZES = {"mediapipe49": 49, "mediapipe196": 196, "mediapipe468": 468}


def test_registered_sets():
    assert set(SIZES) <= set(landmark_set_names())


@pytest.mark.parametrize("name", sorted(SIZES))
def test_shapes_and_indices(name):
    landmarks = get_landmark_set(name)
    k = SIZES[name]
    assert landmarks.num_landmarks == k
    assert landmarks.mesh_indices.shape == (k,) and landmarks.flip_permutation.shape == (k,)
    assert landmarks.template.shape == (k, 2) and landmarks.template.dtype == np.float32
    assert len(set(landmarks.mesh_indices.tolist())) == k
    assert landmarks.mesh_indices.min() >= 0 and landmarks.mesh_indices.max() < 468
    assert landmarks.version >= 1 and landmarks.image_size == 112


@pytest.mark.parametrize("name", sorted(SIZES))
def test_flip_is_an_involution_that_swaps_sides(name):
    landmarks = get_landmark_set(name)
    flip = landmarks.flip_permutation
    assert np.array_equal(flip[flip], np.arange(landmarks.num_landmarks))
    x = landmarks.template[:, 0]
    centre = landmarks.image_size / 2
    left, right = x < centre - 0.5, x > centre + 0.5
    assert left.sum() == right.sum() > 0
    assert np.all(x[flip[left]] > centre + 0.5)
    assert np.all(x[flip[right]] < centre - 0.5)
    on_midline = flip == np.arange(landmarks.num_landmarks)
    assert np.allclose(x[on_midline], centre, atol=1e-3)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_template_is_mirror_symmetric(name):
    landmarks = get_landmark_set(name)
    mirrored = landmarks.template[landmarks.flip_permutation].copy()
    mirrored[:, 0] = landmarks.image_size - mirrored[:, 0]
    np.testing.assert_allclose(mirrored, landmarks.template, atol=2e-3)


@pytest.mark.parametrize("name", ["mediapipe49", "mediapipe196"])
def test_sampled_sets_lie_inside_the_crop_and_spread_out(name):
    template = get_landmark_set(name).template
    assert np.all((template > 0) & (template < 112))
    distances = np.linalg.norm(template[:, None] - template[None], axis=-1) + np.eye(len(template)) * 1e9
    # Farthest-point sampling: no two landmarks of a set nearly coincide.
    assert distances.min() > 1.5


def test_template_matches_the_arcface_five_points():
    # One real face (a broad smile lifts the mouth corners) fitted by least squares: eyes land within a few pixels,
    # nose tip and mouth corners within 8 (measured: eyes 2.6 and 3.1, the others 6.9 to 7.6).
    errors = np.linalg.norm(five_points_from_mesh(get_face_mesh().template) - ARCFACE_TEMPLATE, axis=1)
    assert errors[:2].max() < 4.0 and errors.max() < 8.5, errors


def test_mesh_flip_swaps_eye_contours():
    mesh = get_face_mesh()
    right_eye = set(mesh.contours["right_eye"][1][0])
    left_eye = set(mesh.contours["left_eye"][1][0])
    assert {int(mesh.flip_permutation[i]) for i in right_eye} == left_eye
    assert np.mean(mesh.template[list(right_eye), 0]) < 56 < np.mean(mesh.template[list(left_eye), 0])


def test_unknown_set_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown landmark set 'nope'"):
        get_landmark_set("nope")


def test_shared_arrays_are_read_only():
    with pytest.raises(ValueError):
        get_landmark_set("mediapipe49").template[0, 0] = 1.0


def test_grid196_is_the_regular_patch_grid_row_major():
    grid = get_landmark_set("grid196")
    assert "grid196" in landmark_set_names() and grid.num_landmarks == 196 and grid.patch_size == 8
    # id 14 r + c is the centre (8 c + 4, 8 r + 4) of the patch in row r, column c of the 112 crop.
    np.testing.assert_array_equal(grid.template[[0, 1, 14, 15, 195]], [[4, 4], [12, 4], [4, 12], [12, 12], [108, 108]])
    assert grid.template.dtype == np.float32 and grid.image_size == 112


def test_grid_flip_mirrors_columns():
    grid = get_landmark_set("grid196")
    flip = grid.flip_permutation
    assert flip[0] == 13 and flip[14] == 27 and flip[20] == 21  # row 0, col 0 <-> col 13; row 1, col 6 <-> col 7
    assert np.array_equal(flip[flip], np.arange(196))
    # Mirroring the grid (x -> 112 - x) and renaming the slots gives the grid back: no id has a fixed point.
    mirrored = grid.template[flip].copy()
    mirrored[:, 0] = 112 - mirrored[:, 0]
    np.testing.assert_array_equal(mirrored, grid.template)
    assert not np.any(flip == np.arange(196))


def test_grid_set_has_no_mesh_points_and_never_follows_the_face():
    grid = get_landmark_set("grid196")
    with pytest.raises(ConfigError, match="'grid196' is the regular grid of 8 x 8 patches") as error:
        grid.mesh_indices  # noqa: B018 - the property is what is tested
    assert "\n" not in str(error.value)
    mesh = np.random.default_rng(0).uniform(0, 224, (468, 2)).astype(np.float32)
    np.testing.assert_array_equal(grid.points_on(mesh, 224), grid.template * 2)
    mediapipe = get_landmark_set("mediapipe49")
    np.testing.assert_array_equal(mediapipe.points_on(mesh, 224), mesh[mediapipe.mesh_indices])
