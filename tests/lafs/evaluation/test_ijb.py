"""IJB-B / IJB-C 1:1 pipeline on a tiny IJBC-style tree generated from synthetic faces."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lafs.errors import DataError
from lafs.evaluation.ijb import (
    IJBMeta,
    IJBOptions,
    align_images,
    evaluate_features,
    evaluate_ijb,
    pair_scores,
    read_meta,
    template_features,
)
from lafs.landmarks.align import ARCFACE_TEMPLATE, transform_points, warp_image

LOOSE = 176
# Each identity: template (10i+1) = media A (2 images); template (10i+2) = media B (1 image) + media C (1 image).
LAYOUT = [(1, 0), (1, 0), (2, 1), (2, 2)]
IDENTITIES = 3
PATCH_COLOURS = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220]], dtype=np.uint8)


def _similarity(rng: np.random.Generator) -> np.ndarray:
    """Crop -> loose-crop map (project coordinates) that keeps the whole 112 crop inside the loose crop."""
    scale = rng.uniform(1.15, 1.35)
    angle = np.deg2rad(rng.uniform(-15, 15))
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shift = np.array([LOOSE / 2, LOOSE / 2]) - linear @ np.array([56.0, 56.0]) + rng.uniform(-3, 3, 2)
    return np.concatenate([linear, shift[:, None]], axis=1)


def write_ijbc(root: Path, seed: int = 0) -> dict:
    """Write ``root/IJBC`` in insightface's layout; returns what the tests need to know about it."""
    from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig

    faces = SyntheticFaces(
        SyntheticFacesConfig(num_identities=IDENTITIES, images_per_identity=len(LAYOUT), landmark_set="mediapipe49")
    )
    rng = np.random.default_rng(seed)
    ijbc = root / "IJBC"
    (ijbc / "loose_crop").mkdir(parents=True)
    (ijbc / "meta").mkdir()
    tid_mid, points_lines, crops, project_points, identity_of_template = [], [], [], [], {}
    for index in range(len(faces)):
        item = faces[index]
        identity, number = item["label"], index % len(LAYOUT)
        face = item["image"].copy()
        face[:14] = PATCH_COLOURS[identity]  # identity colour band, the same in the mirror image
        forward = _similarity(rng)
        loose = warp_image(face, forward, size=LOOSE)
        name = f"{index + 1}.jpg"
        cv2.imwrite(
            str(ijbc / "loose_crop" / name), cv2.cvtColor(loose, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 98]
        )
        points = transform_points(ARCFACE_TEMPLATE, forward).astype(np.float64)  # project convention
        opencv = points - 0.5  # insightface's files: integer pixel centres
        template = 10 * identity + 1 + (LAYOUT[number][0] - 1)
        media = 100 * identity + LAYOUT[number][1]
        score = rng.uniform(0.5, 1.0)
        tid_mid.append(f"{name} {template} {media}")
        points_lines.append(" ".join([name, *(f"{v:.3f}" for v in opencv.reshape(-1)), f"{score:.3f}"]))
        crops.append(face)
        project_points.append(points)
        identity_of_template[template] = identity
    templates = sorted(identity_of_template)
    pairs = [(a, b) for i, a in enumerate(templates) for b in templates[i + 1 :]]
    pair_lines = [f"{a} {b} {int(identity_of_template[a] == identity_of_template[b])}" for a, b in pairs]
    (ijbc / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(tid_mid) + "\n")
    (ijbc / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(points_lines) + "\n")
    (ijbc / "meta" / "ijbc_template_pair_label.txt").write_text("\n".join(pair_lines) + "\n")
    return {"root": ijbc, "crops": crops, "points": np.stack(project_points), "num_pairs": len(pairs)}


@pytest.fixture(scope="module")
def ijbc(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_ijbc(tmp_path_factory.mktemp("ijb"))


class ColourIdentity(torch.nn.Module):
    """A fake encoder: the embedding is a soft one-hot of which identity colour fills the top band."""

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        band = batch[:, :, 3:10, 10:100].mean(dim=(2, 3))  # (B, 3) in [-1, 1]
        reference = torch.from_numpy(PATCH_COLOURS.astype(np.float32) / 127.5 - 1.0)
        distance = ((band[:, None, :] - reference[None]) ** 2).sum(-1)
        return torch.exp(-distance / 0.05) * 3.0  # norm well away from 1, so feature_norm matters


# ------------------------------------------------------------------------------------------------- meta, alignment --


def test_read_meta(ijbc):
    meta = read_meta(ijbc["root"], "IJBC")
    n = IDENTITIES * len(LAYOUT)
    assert meta.image_names[:2] == ["1.jpg", "2.jpg"] and len(meta.image_names) == n
    assert meta.template_ids.tolist()[:4] == [1, 1, 2, 2] and meta.media_ids.tolist()[:4] == [0, 0, 1, 2]
    assert meta.pairs.shape == (ijbc["num_pairs"], 2) and meta.labels.dtype == np.bool_
    assert meta.labels.sum() == IDENTITIES
    assert meta.five_points.shape == (n, 5, 2) and meta.scores.shape == (n,)
    # insightface's integer-centre points come back in the project convention (+0.5), to the file's 3 decimals.
    np.testing.assert_allclose(meta.five_points, ijbc["points"], atol=1e-3)
    assert ((meta.scores >= 0.5) & (meta.scores <= 1.0)).all()


def test_alignment_recovers_the_crop(ijbc):
    meta = read_meta(ijbc["root"], "IJBC")
    aligned = list(align_images(ijbc["root"], meta))
    assert len(aligned) == len(ijbc["crops"])
    for image, crop in zip(aligned, ijbc["crops"], strict=True):
        assert image.shape == (112, 112, 3) and image.dtype == np.uint8
        diff = np.abs(image[2:-2, 2:-2].astype(float) - crop[2:-2, 2:-2].astype(float)).mean()
        assert diff < 4.0, diff
    # Half a pixel off (forgetting the convention change) is measurably worse than the right alignment.
    shifted = IJBMeta(**{**meta.__dict__, "five_points": meta.five_points - 0.5})
    off = next(align_images(ijbc["root"], shifted)).astype(float)
    right = np.abs(aligned[0][2:-2, 2:-2].astype(float) - ijbc["crops"][0][2:-2, 2:-2]).mean()
    assert np.abs(off[2:-2, 2:-2] - ijbc["crops"][0][2:-2, 2:-2]).mean() > right


# ----------------------------------------------------------------------------------------------------- templates --


def _tiny_meta() -> tuple[IJBMeta, np.ndarray]:
    features = np.array([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 2.0], [2.0, 0.0]])
    meta = IJBMeta(
        image_names=[f"{i}.jpg" for i in range(5)],
        template_ids=np.array([7, 7, 7, 9, 4]),
        media_ids=np.array([1, 1, 2, 3, 5]),
        pairs=np.array([[7, 9], [4, 7], [9, 4]]),
        labels=np.array([True, False, False]),
        five_points=np.zeros((5, 5, 2)),
        scores=np.array([0.5, 1.0, 0.25, 1.0, 1.0]),
    )
    return meta, features


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


@pytest.mark.parametrize(
    ("options", "template7"),
    [
        # N1: raw features; media 1 = mean([3,0],[0,1]) = [1.5,0.5]; + media 2 [1,1] = [2.5,1.5].
        (IJBOptions(feature_norm=True), [2.5, 1.5]),
        # N0: normalise first; media 1 = mean([1,0],[0,1]) = [.5,.5]; + [1,1]/sqrt2.
        (IJBOptions(), [0.5 + 2**-0.5, 0.5 + 2**-0.5]),
        # N1D1: media 1 = mean([1.5,0],[0,1]) = [.75,.5]; media 2 = [.25,.25]; sum [1, .75].
        (IJBOptions(feature_norm=True, detector_score=True), [1.0, 0.75]),
        # N0D1: media 1 = mean([.5,0],[0,1]) = [.25,.5]; media 2 = .25*[1,1]/sqrt2.
        (IJBOptions(detector_score=True), [0.25 + 0.25 * 2**-0.5, 0.5 + 0.25 * 2**-0.5]),
    ],
)
def test_template_features_hand_computed(options, template7):
    meta, features = _tiny_meta()
    ids, feats = template_features(features, meta, options)
    assert ids.tolist() == [4, 7, 9]
    expected = np.stack([_unit([1, 0]), _unit(template7), _unit([0, 1])])
    np.testing.assert_allclose(feats, expected, atol=1e-12)
    scores = pair_scores(ids, feats, meta.pairs)
    np.testing.assert_allclose(scores, [expected[1, 1], expected[1, 0], 0.0], atol=1e-12)


def test_options_names():
    assert IJBOptions().name == "F" and IJBOptions().test_mode == "N0D0F2"
    full = IJBOptions(flip=True, feature_norm=True, detector_score=True)
    assert full.name == "NDF" and full.test_mode == "N1D1F2"
    assert IJBOptions(flip=False, feature_norm=True).name == "N"
    assert IJBOptions(flip=False, detector_score=True).test_mode == "N0D1F0"
    assert IJBOptions(flip=False).name == "none"


def test_evaluate_features_report():
    meta, features = _tiny_meta()
    report = evaluate_features(features, meta, IJBOptions(flip=False))
    assert report["num_templates"] == 3 and report["num_media"] == 4 and report["num_images"] == 5
    assert report["num_pairs"] == 3 and report["num_same"] == 1
    assert list(report["tar_at_far"]) == ["1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01"]
    assert not any(report["tar_at_far_resolvable"].values())  # only 2 different pairs


# ------------------------------------------------------------------------------------------------- whole pipeline --


@pytest.mark.parametrize("options", [IJBOptions(), IJBOptions(flip=False, feature_norm=True, detector_score=True)])
def test_perfect_fake_model(ijbc, options):
    report = evaluate_ijb(ColourIdentity(), ijbc["root"], "IJBC", options, batch_size=5)
    assert report["dataset"] == "IJBC"
    assert report["options"]["name"] == options.name and report["options"]["flip"] == options.flip
    assert report["tar_at_far"] == {key: 1.0 for key in report["tar_at_far_resolvable"]}
    assert report["auc"] == pytest.approx(1.0)
    assert report["num_images"] == 12 and report["num_templates"] == 6 and report["num_pairs"] == 15
    assert report["seconds"] > 0
    json.dumps(report)


# -------------------------------------------------------------------------------------------------------- errors --


@pytest.fixture
def broken(ijbc, tmp_path):
    import shutil

    copy = tmp_path / "IJBC"
    shutil.copytree(ijbc["root"], copy)
    return copy


def _edit_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("file", "text"),
    [
        ("ijbc_face_tid_mid.txt", "3.jpg 2"),
        ("ijbc_face_tid_mid.txt", "3.jpg two 1"),
        ("ijbc_name_5pts_score.txt", "3.jpg 1 2 3 4 5 6 7 8 9 10"),
        ("ijbc_name_5pts_score.txt", "3.jpg 1 2 3 4 5 6 7 8 9 x 0.9"),
        ("ijbc_template_pair_label.txt", "1 2"),
        ("ijbc_template_pair_label.txt", "1 2 yes"),
    ],
)
def test_malformed_line_names_file_and_line(broken, file, text):
    _edit_line(broken / "meta" / file, 3, text)
    with pytest.raises(DataError, match=re.escape(f"{file}:3: ")) as info:
        read_meta(broken, "IJBC")
    assert "\n" not in str(info.value)


def test_other_meta_errors(broken):
    with pytest.raises(DataError, match="unknown IJB dataset"):
        read_meta(broken, "IJBA")
    with pytest.raises(DataError, match=r"ijbb_face_tid_mid\.txt: missing"):
        read_meta(broken, "IJBB")
    _edit_line(broken / "meta" / "ijbc_template_pair_label.txt", 2, "1 999 0")
    with pytest.raises(DataError, match="template 999"):
        read_meta(broken, "IJBC")
    _edit_line(broken / "meta" / "ijbc_template_pair_label.txt", 2, "1 2 3")
    with pytest.raises(DataError, match="label 3"):
        read_meta(broken, "IJBC")


def test_missing_image(broken):
    meta = read_meta(broken, "IJBC")
    (broken / "loose_crop" / "5.jpg").unlink()
    with pytest.raises(DataError, match=r"5\.jpg: missing image"):
        list(align_images(broken, meta))


# ----------------------------------------------------------------------------------------------------------- CLI --


def test_cli_end_to_end(ijbc, tmp_path, capsys):
    import timm

    import lafs  # noqa: F401  (registers the models)
    from lafs.export import save_encoder
    from tools.evaluate_ijb import main

    torch.manual_seed(0)
    model = timm.create_model("lafs_vit_nano_p8_112", landmark_set="mediapipe49", embed_dim=32, depth=2, num_heads=2)
    encoder = save_encoder(model, tmp_path / "encoder")
    out = tmp_path / "out"
    argv = ["--input", str(encoder), "--ijb", str(ijbc["root"]), "--output", str(out), "--detector-score"]
    assert main([*argv, "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("landmarks: template") and printed[1] == "IJBC: template landmarks"
    assert printed[2].split(" | ")[1:] == [f"{k:>8}" for k in ("1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01")]
    assert printed[3].startswith("IJBC N0D1F2")
    report = json.loads((out / "ijb_report.json").read_text())
    assert report["landmark_source"] == "template" and report["landmarks"] == {"source": "template"}
    assert report["options"] == {
        "name": "DF",
        "test_mode": "N0D1F2",
        "flip": True,
        "feature_norm": False,
        "detector_score": True,
    }
    assert report["embedding_dim"] == 32 and report["num_pairs"] == ijbc["num_pairs"]
    assert set(report["tar_at_far"]) == set(report["tar_at_far_resolvable"])
    assert not list(out.glob(".*.tmp"))


def test_cli_errors(ijbc, tmp_path, capsys):
    from tools.evaluate_ijb import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "--feature-norm" in capsys.readouterr().out
    assert main(["--input", str(tmp_path), "--ijb", str(ijbc["root"]), "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    other = tmp_path / "somewhere"
    other.mkdir()
    assert main(["--input", str(tmp_path), "--ijb", str(other), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pass --dataset" in err and err.count("\n") == 1


def test_cli_gives_a_mediapipe_encoder_mediapipe_landmarks_cached_beside_the_meta(tmp_path, capsys):
    import timm

    import lafs  # noqa: F401  (registers the models)
    from lafs.export import save_encoder
    from tools.evaluate_ijb import main

    root = write_ijbc(tmp_path / "data")["root"]
    model = timm.create_model("lafs_vit_nano_p8_112", landmark_set="mediapipe49", embed_dim=32, depth=2, num_heads=2)
    encoder = save_encoder(model, tmp_path / "encoder", landmark_source="mediapipe")
    argv = ["--input", str(encoder), "--ijb", str(root), "--batch-size", "4", "--workers", "1"]
    assert main([*argv, "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.splitlines()
    cache = root / "meta" / "ijbc_name_5pts_score.txt.landmarks-mediapipe49.npz"
    assert printed[0].startswith("landmarks: mediapipe") and printed[1].startswith(
        f"IJBC: MediaPipe landmarks of {IDENTITIES * len(LAYOUT)} images computed ({cache})"
    )
    report = json.loads((tmp_path / "out" / "ijb_report.json").read_text())
    assert report["landmark_source"] == report["trained_with"] == "mediapipe"
    record = report["landmarks"]
    assert record["cache"] == str(cache) and record["images"] == 12 and record["no_face"] <= 2
    assert main([*argv, "--output", str(tmp_path / "again")]) == 0
    assert "images read" in capsys.readouterr().out
    again = json.loads((tmp_path / "again" / "ijb_report.json").read_text())
    assert again["tar_at_far"] == report["tar_at_far"] and again["auc"] == report["auc"]
