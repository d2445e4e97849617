"""tools.embed and tools.verify with a tiny exported encoder: embeddings of aligned crops and of photos (aligned with
MediaPipe), failures listed, never dropped, and same/different decisions against a threshold from a report."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
from skimage.data import astronaut

import lafs  # noqa: F401  (registers the models with timm)
from lafs.errors import DataError
from lafs.evaluation.verification import embed_images
from lafs.export import load_encoder, save_encoder
from lafs.landmarks.sets import get_landmark_set
from lafs.landmarks.sources import MediaPipeLandmarks, scaled_template
from lafs.photos import cosine, l2_normalise_rows, load_faces, threshold_from_report, unusable_rows
from tests.conftest import grey_image, write_face_folder
from tools.embed import main as embed_main
from tools.verify import main as verify_main


def write_rgb(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = timm.create_model("lafs_vit_nano_p8_112", landmark_set="mediapipe49", embed_dim=32, depth=2, num_heads=2)
    return save_encoder(model, tmp_path_factory.mktemp("model") / "encoder")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The astronaut photo, the same photo rescaled and shifted in a larger canvas, a grey image, a synthetic face."""
    root = tmp_path_factory.mktemp("photos")
    photo = astronaut()
    canvas = np.empty((700, 820, 3), np.uint8)
    canvas[:] = (90, 100, 120)
    matrix = np.array([[0.85, 0, 170], [0, 0.85, 120]], dtype=np.float64)
    moved = cv2.warpAffine(photo, matrix, (820, 700), dst=canvas, borderMode=cv2.BORDER_TRANSPARENT)
    faces, _ = write_face_folder(root / "faces", identities=1, per_identity=1)
    return {
        "astronaut": write_rgb(root / "astronaut.jpg", photo),
        "moved": write_rgb(root / "moved.png", moved),
        "grey": grey_image(root / "grey.png", size=300),
        "synthetic": next(faces.rglob("*.png")),
    }


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ---------------------------------------------------------------------------------------------------------- embed --


def test_embed_aligned_folder(tmp_path: Path, encoder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, items = write_face_folder(tmp_path / "faces", identities=2, per_identity=3)
    output = tmp_path / "out" / "emb.npy"
    assert embed_main(["--input", str(folder), "--model", str(encoder), "--output", str(output)]) == 0
    summary = capsys.readouterr().out
    assert re.search(r"embedded 6 of 6 images, 0 failed, [\d.]+ images/s", summary), summary
    embeddings = np.load(output)
    assert embeddings.shape == (6, 32) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    with open(output.with_suffix(".index.csv"), newline="") as f:
        rows = list(csv.reader(f))
    expected = sorted(folder.rglob("*.png"))
    assert rows[0] == ["row", "path"]
    assert rows[1:] == [[str(i), str(p)] for i, p in enumerate(expected)]
    assert not output.with_suffix(".failed.csv").exists()
    # row i is the image on index line i (write_face_folder's items are in sorted-path order)
    direct = embed_images(load_encoder(encoder), [item["image"] for item in items], flip=True)
    np.testing.assert_allclose(embeddings, direct / np.linalg.norm(direct, axis=1, keepdims=True), atol=1e-5)
    assert not [p for p in output.parent.iterdir() if p.name.startswith(".")]  # no temporary files left

    # --no-flip differs from the flip sum; the same image gives the same row either way
    flipless = tmp_path / "flipless.npy"
    assert embed_main(["--input", str(folder), "--model", str(encoder), "--output", str(flipless), "--no-flip"]) == 0
    assert not np.allclose(np.load(flipless), embeddings)


def test_embed_align_lists_failures(
    tmp_path: Path, encoder: Path, photos: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    output = tmp_path / "emb.npy"
    inputs = [str(photos["astronaut"]), str(photos["grey"]), str(broken)]
    assert embed_main(["--input", *inputs, "--model", str(encoder), "--output", str(output), "--align"]) == 0
    captured = capsys.readouterr()
    assert "embedded 1 of 3 images, 2 failed" in captured.out
    assert f"{photos['grey']}: no face" in captured.err and f"{broken}: unreadable" in captured.err
    assert np.load(output).shape == (1, 32)
    with open(output.with_suffix(".index.csv"), newline="") as f:
        assert list(csv.reader(f))[1:] == [["0", str(photos["astronaut"])]]
    with open(output.with_suffix(".failed.csv"), newline="") as f:
        failed = list(csv.reader(f))
    assert failed[0] == ["path", "reason"]
    assert [row[0] for row in failed[1:]] == [str(photos["grey"]), str(broken)]
    assert failed[1][1] == "no face" and failed[2][1].startswith("unreadable")


def test_embed_nothing_succeeds(
    tmp_path: Path, encoder: Path, photos: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "emb.npy"
    args = ["--input", str(photos["grey"]), "--model", str(encoder), "--output", str(output), "--align"]
    assert embed_main(args) == 2
    assert "nothing written" in error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_embed_without_align_rejects_photos(tmp_path: Path, encoder: Path) -> None:
    wide = write_rgb(tmp_path / "wide.png", np.zeros((100, 150, 3), np.uint8))
    square = write_rgb(tmp_path / "big.png", np.zeros((224, 224, 3), np.uint8))
    photo = write_rgb(tmp_path / "photo.png", np.zeros((2048, 2048, 3), np.uint8))  # square, but a photo
    crops, kept, failures = load_faces([wide, square, photo], align=False)
    assert kept == [square] and crops[0].shape == (112, 112, 3)
    assert failures[0][0] == wide and "not square" in failures[0][1]
    assert failures[1] == (photo, "not an aligned crop: 2048x2048 is a photo, not a face crop (photos need --align)")


def test_embed_without_align_exits_2_when_every_image_is_a_photo(
    tmp_path: Path, encoder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = write_rgb(tmp_path / "photo.png", np.zeros((2048, 2048, 3), np.uint8))
    assert embed_main(["--model", str(encoder), "--input", str(photo), "--output", str(tmp_path / "e.npy")]) == 2
    assert "is a photo, not a face crop (photos need --align)" in capsys.readouterr().err
    assert not (tmp_path / "e.npy").exists()


def test_of_several_faces_the_largest_is_aligned_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    face = cv2.resize(astronaut()[0:300, 100:400], (300, 300))
    canvas = np.full((300, 660, 3), 128, np.uint8)
    canvas[:, :300] = face
    canvas[50:250, 340:540] = cv2.resize(face[:, ::-1], (200, 200))  # a smaller, mirrored second face
    two = write_rgb(tmp_path / "two.png", canvas)
    with caplog.at_level("WARNING", logger="lafs.photos"):
        _, kept, failures = load_faces([two], align=True)
    assert kept == [two] and not failures
    assert f"{two}: 2 faces; using the largest, at x " in caplog.text
    left = int(caplog.text.split(", at x ")[1].split("..")[0])
    assert left < 300  # the larger face is on the left


# --------------------------------------------------------------------------------------------------------- verify --


def test_verify_same_face_moved(encoder: Path, photos: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    def similarity(a: Path, b: Path, *extra: str) -> tuple[float, str]:
        assert verify_main([str(a), str(b), "--model", str(encoder), "--align", *extra]) == 0
        out = capsys.readouterr().out
        return float(re.search(r"similarity (-?[\d.]+)", out).group(1)), out

    same, out = similarity(photos["astronaut"], photos["moved"], "--threshold", "0.9")
    other, _ = similarity(photos["astronaut"], photos["synthetic"])
    assert same > other and same > 0.9
    assert "same (" in out and "given threshold" in out
    _, out = similarity(photos["astronaut"], photos["synthetic"], "--threshold", f"{min(1.0, other + 0.01):.4f}")
    assert "different (" in out


def write_report(path: Path) -> Path:
    report = {
        "encoder": {"architecture": "lafs_vit_nano_p8_112"},
        "protocol": {"folds": 10},
        "sets": {
            "lfw": {"accuracy": 0.5, "threshold_at_far": {"1e-04": 0.99, "1e-03": 0.5}},
            "agedb_30": {"accuracy": 0.5, "threshold_at_far": {"1e-03": 0.999}},
        },
    }
    path.write_text(json.dumps(report))
    return path


def test_threshold_from_report(tmp_path: Path) -> None:
    report = write_report(tmp_path / "report.json")
    assert threshold_from_report(report, 1e-3, "lfw") == (0.5, "LFW threshold at FAR 1e-03")
    assert threshold_from_report(tmp_path, 1e-4, "LFW") == (0.99, "LFW threshold at FAR 1e-04")
    with pytest.raises(DataError, match="several sets"):
        threshold_from_report(report, 1e-3, None)
    with pytest.raises(DataError, match="no set 'cplfw'"):
        threshold_from_report(report, 1e-3, "cplfw")
    with pytest.raises(DataError, match="no threshold at FAR 1e-02"):
        threshold_from_report(report, 1e-2, "lfw")
    with pytest.raises(DataError, match="cannot read"):
        threshold_from_report(tmp_path / "missing.json", 1e-3, "lfw")


def test_verify_with_report(
    tmp_path: Path, encoder: Path, photos: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    report = write_report(tmp_path / "report.json")
    base = [str(photos["astronaut"]), str(photos["moved"]), "--model", str(encoder), "--align", "--report", str(report)]
    assert verify_main([*base, "--far", "1e-3", "--set", "lfw"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^same \(\S+ >= 0\.5000, LFW threshold at FAR 1e-03\)$", out, re.MULTILINE), out
    other = [str(photos["astronaut"]), str(photos["synthetic"]), *base[2:]]
    assert verify_main([*other, "--far", "1e-3", "--set", "agedb_30"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^different \(\S+ < 0\.9990, AGEDB_30 threshold at FAR 1e-03\)$", out, re.MULTILINE), out

    assert verify_main([*base, "--far", "1e-3", "--set", "cfp_fp"]) == 2
    assert "no set 'cfp_fp'" in error_line(capsys)
    assert verify_main([*base, "--far", "1e-2", "--set", "lfw"]) == 2
    assert "no threshold at FAR 1e-02" in error_line(capsys)


def test_verify_no_face(encoder: Path, photos: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert verify_main([str(photos["astronaut"]), str(photos["grey"]), "--model", str(encoder), "--align"]) == 2
    line = error_line(capsys)
    assert line == f"error: {photos['grey']}: no face"


def test_a_mediapipe_encoder_gets_mediapipe_landmarks_on_each_crop(
    tmp_path: Path, photos: dict[str, Path], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    model = timm.create_model("lafs_vit_nano_p8_112", landmark_set="mediapipe49", embed_dim=32, depth=2, num_heads=2)
    encoder = save_encoder(model, tmp_path / "encoder", landmark_source="mediapipe")
    inputs = [str(photos["synthetic"]), str(grey_image(tmp_path / "grey.png"))]  # aligned crops: a face, no face
    output = tmp_path / "emb.npy"
    assert embed_main(["--input", *inputs, "--model", str(encoder), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("landmarks: mediapipe (MediaPipe on each aligned face)")
    assert "MediaPipe found no face on 1 of 2 crops: they get the template" in printed
    crops = [cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB) for path in inputs]
    source = MediaPipeLandmarks("mediapipe49")
    try:
        found, valid = source(crops[0])
    finally:
        source.close()
    assert valid.all()
    landmarks = np.stack([found, scaled_template("mediapipe49", 112, 112)])
    permutation = get_landmark_set("mediapipe49").flip_permutation
    direct = embed_images(model, crops, landmarks=landmarks, flip_permutation=permutation)
    np.testing.assert_allclose(np.load(output), direct / np.linalg.norm(direct, axis=1, keepdims=True), atol=1e-5)

    with caplog.at_level("WARNING", logger="lafs.landmarks"):
        args = ["--input", *inputs, "--model", str(encoder), "--output", str(output), "--overwrite"]
        assert embed_main([*args, "--landmarks", "template"]) == 0
    assert "using template, but" in caplog.text
    assert capsys.readouterr().out.startswith("landmarks: template")
    assert not np.allclose(np.load(output)[0], direct[0] / np.linalg.norm(direct[0]), atol=1e-3)

    assert verify_main([*inputs, "--model", str(encoder)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("landmarks: mediapipe") and printed[-1].startswith("similarity ")


def test_cosine() -> None:
    assert cosine(np.array([1.0, 0.0]), np.array([2.0, 0.0])) == pytest.approx(1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(0.0)
    for broken in (np.zeros(3), np.array([1.0, np.nan, 0.0])):  # no direction: an error, never a number
        with pytest.raises(DataError, match=r"non-finite .* or all-zero"):
            cosine(broken, np.ones(3))


def test_normalisation_is_exact_for_any_finite_row_and_marks_the_others() -> None:
    # 3e25 and 4e25 in float32: their squares overflow float32 (and 3e200 would overflow float64); the unit vector is
    # (0.6, 0.8) all the same.
    rows = np.array([[3e25, 4e25], [3.0, 4.0], [np.nan, 1.0], [0.0, 0.0], [np.inf, 1.0]], dtype=np.float32)
    unit = l2_normalise_rows(rows)
    np.testing.assert_allclose(unit[:2], [[0.6, 0.8], [0.6, 0.8]], rtol=1e-7)
    assert np.isnan(unit[2:]).all() and unusable_rows(rows).tolist() == [False, False, True, True, True]
    np.testing.assert_allclose(l2_normalise_rows(np.array([[3e200, -4e200]])), [[0.6, -0.8]], rtol=1e-7)


def test_embed_lists_nan_embeddings_as_failures(
    tmp_path: Path, encoder: Path, photos: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import lafs.evaluation.verification

    real = lafs.evaluation.verification.embed_images

    def half_broken(*args: object, **kwargs: object) -> np.ndarray:  # the second image's vector is NaN
        embeddings = real(*args, **kwargs)  # type: ignore[arg-type]
        embeddings[1] = np.nan
        return embeddings

    monkeypatch.setattr(lafs.evaluation.verification, "embed_images", half_broken)
    folder = tmp_path / "crops"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(photos["synthetic"].read_bytes())
    out = tmp_path / "e.npy"
    assert embed_main(["--model", str(encoder), "--input", str(folder), "--output", str(out)]) == 0
    assert np.load(out).shape[0] == 1 and np.isfinite(np.load(out)).all()
    assert "1 failed" in capsys.readouterr().out
    assert "b.png" in (tmp_path / "e.failed.csv").read_text()


@pytest.mark.parametrize("main", [embed_main, verify_main])
def test_help(main, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "usage: python -m tools." in capsys.readouterr().out


def test_write_embeddings_and_unit_rows(tmp_path):
    from lafs.photos import embedding_side_paths, write_embeddings

    rows = l2_normalise_rows(np.array([[3.0, 4.0], [0.0, -2.0]]))
    assert rows.dtype == np.float32 and rows.tolist() == [[0.6000000238418579, 0.800000011920929], [0.0, -1.0]]
    out = tmp_path / "e.npy"
    index, failed = embedding_side_paths(out)
    write_embeddings(out, rows, [Path("a.png"), Path("b.png")], [(Path("c.png"), "no face")])
    assert np.array_equal(np.load(out), rows)
    assert index.read_text() == "row,path\n0,a.png\n1,b.png\n" and failed.read_text() == "path,reason\nc.png,no face\n"
    write_embeddings(out, rows[:1], [Path("a.png")], [])
    assert not failed.exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())
