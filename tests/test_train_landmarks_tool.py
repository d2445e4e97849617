import json
import math

import numpy as np
import torch

from lafs.landmarks import get_landmark_set
from lafs.landmarks.align import transform_points, warp_image
from lafs.landmarks.cache import CacheInfo, LandmarkCache
from lafs.models.landmark_predictor import load_landmark_predictor
from tools.train_landmarks import AugmentConfig, LandmarkFaces, main, random_affine, split_by_identity

TINY = [
    "data.landmark_set=mediapipe49",
    "model.landmark_set=mediapipe49",
    "model.backbone=mobilenetv3_small_050",
    "synthetic.num_identities=8",
    "synthetic.images_per_identity=4",
    "held_out_fraction=0.25",
    "optim.epochs=3",
    "optim.batch_size=8",
    "optim.warmup_epochs=0",
    "optim.lr=3e-3",
    "num_workers=0",
    "log_every=1",
]
NO_AUGMENT = ["augment.flip_prob=0", "augment.max_rotation=0", "augment.shift_px=0", "augment.scale_jitter=0"]


def test_synthetic_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, *NO_AUGMENT, f"output_dir={out}"]) == 0
    assert "held-out mean error" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    held, train = report["held_out"], report["train"]
    assert held["images"] == 8 and report["held_out_identities"] == 2 and train["images"] == 24
    for key in ("mean_pixel_error", "nme_interocular", "template_mean_pixel_error", "template_nme_interocular"):
        assert math.isfinite(held[key]) and held[key] > 0
    assert held["landmarks"] == 8 * 49
    # The bias alone can learn the data's mean offset from the template: the training loss falls clearly (about
    # 20% in 3 epochs with these settings, for any seed tried); held-out error on 2 identities is too noisy to pin.
    assert train["steps"] == 9
    assert train["loss_last_epoch"] < 0.95 * train["loss_first_epoch"]
    assert (out / "config.yaml").exists() and (out / "log.jsonl").exists()
    model = load_landmark_predictor(out / "predictor")
    assert model.landmark_set == "mediapipe49"
    assert model(torch.zeros(2, 3, 112, 112)).shape == (2, 49, 2)


def write_cache(folder_root, items, path, landmark_set="mediapipe196", missed=()):
    """A complete cache holding the faces' exact landmarks (what MediaPipe would give, without running it)."""
    info = CacheInfo(str(folder_root), len(items), landmark_set, 112, "exact synthetic landmarks")
    cache = LandmarkCache.create(path, info)
    found = np.ones(len(items), dtype=bool)
    found[list(missed)] = False
    cache.write(np.arange(len(items)), np.stack([item["landmarks"] for item in items]), found)
    cache.flush()
    return path


def test_distils_from_a_landmark_cache(face_folder, tmp_path):
    root, items = face_folder
    cache = write_cache(root, items, tmp_path / "cache", missed=[5])
    out = tmp_path / "run"
    args = [f"data.path={root}", f"data.landmarks={cache}", "model.backbone=mobilenetv3_small_050"]
    assert (
        main(
            [*args, "optim.batch_size=4", "held_out_fraction=0.34", "max_steps=1", "num_workers=0", f"output_dir={out}"]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    # 3 identities x 4 images, one face missed by the "teacher" and skipped: one identity held out.
    assert report["held_out_identities"] == 1 and report["train"]["steps"] == 1
    assert report["train"]["images"] + report["held_out"]["images"] == 11
    assert load_landmark_predictor(out / "predictor").landmark_set == "mediapipe196"


def test_bad_input_is_one_line_and_writes_nothing(face_folder, tmp_path, capsys):
    root, items = face_folder
    out = tmp_path / "run"
    common = ["model.backbone=mobilenetv3_small_050", f"output_dir={out}"]
    assert main([f"data.path={root}", f"data.landmarks={tmp_path / 'no_cache'}", *common]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "no_cache" in error and error.count("\n") == 1
    assert not out.exists()
    # A cache of another landmark set.
    cache = write_cache(root, items, tmp_path / "cache196")
    assert main([f"data.path={root}", f"data.landmarks={cache}", *TINY[:2], *common]) == 2
    assert "landmark set mediapipe196" in capsys.readouterr().err
    # A real dataset without a cache has nothing to distil from; set mismatches are caught at start-up too.
    assert main([f"data.path={root}", *common]) == 2
    assert "data.landmarks must be a landmark cache folder" in capsys.readouterr().err
    assert main(["data.landmark_set=mediapipe49", *common]) == 2
    assert "model.landmark_set" in capsys.readouterr().err
    assert not out.exists()


def test_split_holds_out_whole_identities():
    labels = np.repeat(np.arange(20), 5)
    train, held = split_by_identity(labels, 0.2, seed=0)
    assert len(np.unique(labels[held])) == 4 and len(train) + len(held) == 100
    assert not set(labels[train]) & set(labels[held])
    np.testing.assert_array_equal(split_by_identity(labels, 0.2, seed=0)[1], held)
    assert not np.array_equal(split_by_identity(labels, 0.2, seed=1)[1], held)
    train, held = split_by_identity(np.zeros(10, dtype=int), 0.2, seed=0)  # one identity: split images
    assert len(held) == 2 and len(train) == 8


def test_augmentation_moves_image_and_landmarks_together():
    landmark_set = get_landmark_set("mediapipe49")
    landmarks = landmark_set.template.astype(np.float32)
    source = 20  # a landmark off the symmetry axis, so a flip must move it to its partner's slot
    image = np.zeros((112, 112, 3), dtype=np.uint8)
    x, y = np.floor(landmarks[source]).astype(int)
    image[y - 1 : y + 2, x - 1 : x + 2] = 255  # a 3 x 3 blob centred on pixel (x, y): its centre is (x+.5, y+.5)
    landmarks[source] = (x + 0.5, y + 0.5)
    item = {"image": image, "landmarks": landmarks, "landmark_valid": np.ones(49, dtype=bool)}
    aug = AugmentConfig(flip_prob=1.0, max_rotation=10.0, scale_jitter=0.05, shift_px=3.0)
    faces = LandmarkFaces([item], np.array([0]), "mediapipe49", aug, seed=3)
    out = faces[0]
    (slot,) = np.flatnonzero(landmark_set.flip_permutation == source)
    assert slot != source
    ys, xs = np.nonzero(out["image"][..., 0] > 0)
    weights = out["image"][ys, xs, 0].astype(float)
    centroid = np.array([np.average(xs, weights=weights), np.average(ys, weights=weights)]) + 0.5
    np.testing.assert_allclose(out["landmarks"][slot], centroid, atol=0.3)
    # The same map, rebuilt from the same seed, is what moved them.
    rng = np.random.default_rng(np.random.SeedSequence([3, 0, 0]))
    matrix = random_affine(112, rng, aug)
    np.testing.assert_allclose(out["landmarks"][slot], transform_points(landmarks[source], matrix), atol=1e-5)
    np.testing.assert_array_equal(out["image"], warp_image(image, matrix, 112))
