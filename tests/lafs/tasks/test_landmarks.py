import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from lafs.data.collate import collate_faces
from lafs.engine.run_log import read_log
from lafs.landmarks import get_landmark_set
from lafs.landmarks.align import transform_points, warp_image
from lafs.landmarks.cache import CacheInfo, LandmarkCache
from lafs.landmarks.distill import DistillAugmentConfig, LandmarkFaces, random_affine, split_by_identity
from lafs.models.landmark_predictor import load_landmark_predictor
from lafs.tasks import landmarks as landmark_task
from tests.conftest import assert_bad_value_is_one_line
from tools.train_landmarks import main

TINY = [
    "data.landmark_set=mediapipe49",
    "data.image_size=64",  # the predictor's too; 64 px keeps the runs fast
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


def losses(run_dir):
    return [record["loss"] for record in read_log(run_dir) if "loss" in record]


def test_synthetic_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, *NO_AUGMENT, f"output_dir={out}", "eval_every=3"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("landmark predictor -> ") and "held-out mean error" in line and "9 steps" in line
    report = json.loads((out / "report.json").read_text())
    held, train = report["held_out"], report["train"]
    assert held["images"] == 8 and report["held_out_identities"] == 2 and train["images"] == 24
    for key in ("mean_pixel_error", "nme_interocular", "template_mean_pixel_error", "template_nme_interocular"):
        assert math.isfinite(held[key]) and held[key] > 0
    assert held["landmarks"] == 8 * 49
    # 24 training images, batch 8: 3 steps per epoch; the training loss falls clearly over 3 epochs.
    assert train["steps"] == 9
    loss = losses(out)
    assert len(loss) == 9 and np.mean(loss[-3:]) < 0.95 * np.mean(loss[:3])
    evaluations = [r for r in read_log(out) if "held_out_mean_pixel_error" in r]
    assert [r["step"] for r in evaluations] == [3, 6, 9]
    assert evaluations[-1]["held_out_mean_pixel_error"] == pytest.approx(held["mean_pixel_error"])
    assert (out / "config.yaml").exists() and (out / "checkpoints" / "step_00000009").is_dir()
    # The predictor learns the data's landmark set at the data's image size.
    model = load_landmark_predictor(out / "predictor")
    assert model.cfg.landmark_set == "mediapipe49" and model.cfg.image_size == 64
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 49, 2)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    # Augmentation and dropout on: the resumed run must replay the item seeds, the batch order and the RNG state.
    # 24 training images, batch 8: 3 steps per epoch; the stop at step 3 validates (held-out errors) and
    # checkpoints, then the resumed run crosses into the second epoch.
    common = [*TINY, "checkpoint_every=2", "deterministic=true"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main([*common, f"output_dir={whole}", "max_steps=5"]) == 0
    assert main([*common, f"output_dir={part}", "max_steps=3"]) == 0
    assert len(losses(part)) == 3
    assert main([*common, f"output_dir={part}", "max_steps=5"]) == 0  # resume=auto: from the checkpoint at step 3
    assert [r["step"] for r in read_log(part) if "loss" in r] == [1, 2, 3, 4, 5]
    assert losses(part) == losses(whole)
    a, b = load_file(whole / "predictor" / "model.safetensors"), load_file(part / "predictor" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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
    options = ["optim.batch_size=4", "held_out_fraction=0.34", "max_steps=1", "num_workers=0"]
    assert main([*args, *options, f"output_dir={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    # 3 identities x 4 images, one face missed by the "teacher" and skipped: one identity held out.
    assert report["held_out_identities"] == 1 and report["train"]["steps"] == 1
    assert report["train"]["images"] + report["held_out"]["images"] == 11
    assert load_landmark_predictor(out / "predictor").landmark_set == "mediapipe196"


def test_bad_input_is_one_line_and_writes_nothing(face_folder, tmp_path, capsys):
    root, _ = face_folder
    out = tmp_path / "run"
    common = ["model.backbone=mobilenetv3_small_050", f"output_dir={out}"]
    assert main([f"data.path={root}", f"data.landmarks={tmp_path / 'no_cache'}", *common]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "no_cache" in error and error.count("\n") == 1
    assert not out.exists()
    # (A cache of another landmark set is no error: data.landmark_set follows it, tests/lafs/tasks/
    # test_landmark_set_follows.py.)
    # A real dataset without a cache has nothing to distil from.
    assert main([f"data.path={root}", *common]) == 2
    assert "data.landmarks must be a landmark cache folder" in capsys.readouterr().err
    # The landmark set and image size are the data's only; the model section no longer has them.
    assert main(["model.landmark_set=mediapipe49", *common]) == 2
    assert "unknown key 'model.landmark_set'" in capsys.readouterr().err
    assert main(["model.backbone=no_such_net", f"output_dir={out}"]) == 2
    assert "not a timm model" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=-1", "optim.lr"),
        ("optim.lr=0", "optim.lr"),
        ("optim.min_lr=-1e-6", "optim.min_lr"),
        ("optim.min_lr=1", "optim.min_lr"),
        ("optim.weight_decay=-0.1", "optim.weight_decay"),
        ("num_workers=-1", "num_workers"),
        ("max_steps=-1", "max_steps"),
        ("synthetic.num_identities=0", "synthetic.num_identities"),
    ],
)
def test_bad_value_is_one_line_naming_its_key(tmp_path, capsys, override, key):
    assert_bad_value_is_one_line(main, [*TINY, override], tmp_path / "run", key, capsys)


def test_non_finite_loss_is_one_line_naming_the_step(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(landmark_task, "landmark_loss", lambda *args: torch.tensor(float("nan"), requires_grad=True))
    assert main([*TINY, f"output_dir={tmp_path / 'run'}"]) == 2
    error = capsys.readouterr().err
    assert error == "error: non-finite landmark loss at step 1: lower optim.lr\n"


def test_split_holds_out_whole_identities():
    labels = np.repeat(np.arange(20), 5)
    train, held = split_by_identity(labels, 0.2, seed=0)
    assert len(np.unique(labels[held])) == 4 and len(train) + len(held) == 100
    assert not set(labels[train]) & set(labels[held])
    np.testing.assert_array_equal(split_by_identity(labels, 0.2, seed=0)[1], held)
    assert not np.array_equal(split_by_identity(labels, 0.2, seed=1)[1], held)
    train, held = split_by_identity(np.zeros(10, dtype=int), 0.2, seed=0)  # one identity: split images
    assert len(held) == 2 and len(train) == 8


def blob_face():
    """A face (template landmarks of mediapipe49) whose landmark 20 is the centre of a 3 x 3 white blob."""
    landmarks = get_landmark_set("mediapipe49").template.astype(np.float32)
    source = 20  # a landmark off the symmetry axis, so a flip must move it to its partner's slot
    image = np.zeros((112, 112, 3), dtype=np.uint8)
    x, y = np.floor(landmarks[source]).astype(int)
    image[y - 1 : y + 2, x - 1 : x + 2] = 255  # a 3 x 3 blob centred on pixel (x, y): its centre is (x+.5, y+.5)
    landmarks[source] = (x + 0.5, y + 0.5)
    return {"image": image, "landmarks": landmarks, "landmark_valid": np.ones(49, dtype=bool)}, source


def test_augmentation_moves_image_and_landmarks_together():
    landmark_set = get_landmark_set("mediapipe49")
    item, source = blob_face()
    aug = DistillAugmentConfig(flip_prob=1.0, max_rotation=10.0, scale_jitter=0.05, shift_px=3.0)
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
    np.testing.assert_allclose(out["landmarks"][slot], transform_points(item["landmarks"][source], matrix), atol=1e-5)
    np.testing.assert_array_equal(out["image"], warp_image(item["image"], matrix, 112))


def test_epoch_reaches_persistent_workers():
    # The engine's loader keeps its workers alive across epochs: they must still draw each epoch's augmentation.
    faces = LandmarkFaces([blob_face()[0]], np.array([0]), "mediapipe49", DistillAugmentConfig(), seed=0)
    loader = DataLoader(faces, batch_size=1, num_workers=1, persistent_workers=True, collate_fn=collate_faces)
    for epoch in range(2):
        faces.set_epoch(epoch)
        (batch,) = list(loader)
        np.testing.assert_array_equal(batch["landmarks"][0].numpy(), faces[0]["landmarks"])
    assert faces.epoch == 1
