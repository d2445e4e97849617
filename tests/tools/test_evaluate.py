import json
import shutil

import numpy as np
import pytest
import timm

import lafs  # noqa: F401 - registers the lafs_vit models with timm
from lafs.data.pairs import write_bin
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig, synthetic_pairs
from lafs.evaluation import tar_at_far, threshold_at_far
from lafs.evaluation.report import format_table
from lafs.export import save_encoder
from tools.evaluate import main

FAR_KEYS = ["1e-04", "1e-03", "1e-02", "1e-01"]


def write_pair_set(path, num_pairs: int, seed: int, image_size: int = 112) -> None:
    cfg = SyntheticFacesConfig(num_identities=4, images_per_identity=3, image_size=image_size, seed=seed)
    images, issame = synthetic_pairs(SyntheticFaces(cfg), num_pairs, seed=seed)
    write_bin(path, list(zip(images[0::2], images[1::2], strict=True)), issame)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    model = timm.create_model("lafs_vit_nano_p8_112", landmark_set="mediapipe49", embed_dim=32, depth=2, num_heads=2)
    save_encoder(model, root / "encoder")
    save_encoder(model, root / "run" / "encoder")  # a run directory holds its encoder in encoder/
    write_pair_set(root / "lfw.bin", 20, seed=0)
    write_pair_set(root / "small_faces.bin", 12, seed=1, image_size=96)  # resized to the encoder's 112 on loading
    return root


def run(data, out, *extra, encoder="encoder"):
    argv = ["--input", str(data / encoder), "--bin", str(data / "lfw.bin"), "--bin", str(data / "small_faces.bin")]
    return main([*argv, "--output", str(out), "--batch-size", "16", "--device", "cpu", *extra])


def test_threshold_at_far_hand_case():
    # Descending: 0.9 s, 0.8 d, 0.7 s, 0.6 d, 0.5 s, 0.4 d (3 same, 3 different: FAR steps of 1/3).
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    issame = [True, False, True, False, True, False]
    assert threshold_at_far(scores, issame, 0.0) == 0.9  # FAR 0: only the top pair is accepted
    assert threshold_at_far(scores, issame, 0.2) == 0.9
    assert threshold_at_far(scores, issame, 1 / 3) == 0.7  # one different pair accepted, TAR 2/3
    assert threshold_at_far(scores, issame, 0.7) == 0.5
    assert threshold_at_far(scores, issame, 1.0) == 0.4
    for far in (0.0, 0.2, 1 / 3, 0.7, 1.0):  # the threshold reproduces tar_at_far's operating point
        threshold = threshold_at_far(scores, issame, far)
        accepted = np.array(scores) >= threshold
        assert accepted[np.array(issame)].mean() == tar_at_far(scores, issame, [far])[far]
        assert accepted[~np.array(issame)].mean() <= far
    # The most similar pair is a different one: at FAR 0 nothing may be accepted, with a finite threshold.
    threshold = threshold_at_far([0.9, 0.8], [False, True], 0.0)
    assert 0.9 < threshold < 1.0
    with pytest.raises(ValueError, match="FAR"):
        threshold_at_far(scores, issame, -0.1)


def test_end_to_end(data, tmp_path, capsys):
    out = tmp_path / "report"
    assert run(data, out) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"encoder", "protocol", "sets", "landmark_source", "trained_with", "trained_with_recorded"}
    assert report["landmark_source"] == report["trained_with"] == "template" and report["trained_with_recorded"]
    assert printed.startswith(
        "landmarks: template (the landmark set's template); the encoder was trained with template"
    )
    assert report["encoder"]["input"] == str(data / "encoder")
    assert report["encoder"]["architecture"] == "lafs_vit_nano_p8_112"
    assert report["encoder"]["model_args"]["embed_dim"] == 32
    assert report["protocol"]["flip"] is True and report["protocol"]["folds"] == 10
    assert report["protocol"]["similarity"].startswith("cosine")
    assert list(report["sets"]) == ["lfw", "small_faces"]
    for name, pairs, resolvable in (("lfw", 20, True), ("small_faces", 12, False)):  # 10 and 6 different pairs
        entry = report["sets"][name]
        assert entry["num_pairs"] == pairs and entry["num_images"] == 2 * pairs and entry["embedding_dim"] == 32
        assert 0 <= entry["accuracy"] <= 1 and entry["accuracy_std"] >= 0
        assert list(entry["tar_at_far"]) == FAR_KEYS and list(entry["threshold_at_far"]) == FAR_KEYS
        assert entry["tar_at_far_resolvable"] == dict(zip(FAR_KEYS, [False] * 3 + [resolvable], strict=True))
        assert 0 <= entry["auc"] <= 1 and 0 <= entry["eer"] <= 1
        assert entry["seconds"] > 0 and entry["images_per_second"] > 0
        assert len(entry["roc"]["far"]) == len(entry["roc"]["tar"]) > 1
    markdown = (out / "report.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| set | pairs | accuracy ± std | TAR@FAR 1e-4 |")
    assert rows[1].startswith("| lfw | 20 | ") and rows[2].startswith("| small_faces | 12 | ")
    assert rows[1].count("*") == 3 and rows[2].count("*") == 4 and "TAR at FAR = 0" in markdown
    png = (out / "roc.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "roc.png"]  # no temporaries left
    assert format_table(report) in printed
    lines = printed.splitlines()
    assert lines[1:3] == ["lfw: template landmarks", "small_faces: template landmarks"]
    table = lines[3:]
    assert table[0].split()[:3] == ["set", "pairs", "accuracy"] and "images/s" in table[0]
    assert table[2].startswith("lfw ") and table[3].startswith("small_faces ")


def test_no_flip_and_run_directory(data, tmp_path):
    out = tmp_path / "report"
    assert run(data, out, "--no-flip", encoder="run") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"]["flip"] is False
    assert report["encoder"]["input"] == str(data / "run") and report["encoder"]["format"] == "lafs-encoder"
    assert set(report["sets"]) == {"lfw", "small_faces"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bin": "missing.bin"}, "missing.bin: no such file"),
        ({"bin": "junk.bin"}, "junk.bin: not a readable pickle"),
        ({"input": "nowhere"}, "not a run directory, an exported encoder folder or an .onnx file"),
        ({"bin": "tiny.bin"}, "tiny.bin: 4 pairs, the 10-fold protocol needs at least 10"),
        ({"input": "truncated"}, "truncated/model.safetensors: unreadable weights (truncated or not safetensors"),
        ({"input": "empty"}, "empty/model.safetensors: unreadable weights (truncated or not safetensors"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(data, tmp_path, capsys, change, message):
    (tmp_path / "junk.bin").write_bytes(b"not a pickle")
    write_pair_set(tmp_path / "tiny.bin", 4, seed=2)
    for name, size in (("truncated", 1000), ("empty", 0)):  # encoder folders whose weights were cut short
        shutil.copytree(data / "encoder", tmp_path / name)
        weights = tmp_path / name / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:size])
    out = tmp_path / "out" / "report"
    encoder = tmp_path / change["input"] if "input" in change else data / "encoder"
    bins = [str(data / "lfw.bin")] + ([str(tmp_path / change["bin"])] if "bin" in change else [])
    argv = ["--input", str(encoder), *(x for b in bins for x in ("--bin", b)), "--output", str(out)]
    assert main([*argv, "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1 and message in captured.err
    assert not (tmp_path / "out").exists()


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--no-flip" in capsys.readouterr().out


def test_a_mediapipe_encoder_is_evaluated_on_mediapipe_landmarks(data, tmp_path, capsys, caplog):
    shutil.copy(data / "lfw.bin", tmp_path / "lfw.bin")
    model = timm.create_model("lafs_vit_nano_p8_112", landmark_set="mediapipe49", embed_dim=32, depth=2, num_heads=2)
    save_encoder(model, tmp_path / "encoder", landmark_source="mediapipe")
    argv = ["--input", str(tmp_path / "encoder"), "--bin", str(tmp_path / "lfw.bin"), "--device", "cpu"]
    assert main([*argv, "--output", str(tmp_path / "first"), "--workers", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    cache = tmp_path / "lfw.bin.landmarks-mediapipe49.npz"
    assert printed[0].startswith("landmarks: mediapipe (MediaPipe on each aligned face)")
    assert printed[1].startswith(f"lfw: MediaPipe landmarks of 40 images computed ({cache}); ")
    report = json.loads((tmp_path / "first" / "report.json").read_text())
    assert report["landmark_source"] == report["trained_with"] == "mediapipe"
    record = report["sets"]["lfw"]["landmarks"]
    assert record["source"] == "mediapipe" and record["cache"] == str(cache) and record["computed"]
    assert record["images"] == 40 and 0 <= record["no_face"] <= 4  # MediaPipe finds almost every synthetic face
    assert (
        "Landmarks: mediapipe (the encoder was trained with mediapipe)."
        in (tmp_path / "first" / "report.md").read_text()
    )

    # Again: the cache is read, and the numbers are the same.
    assert main([*argv, "--output", str(tmp_path / "second")]) == 0
    assert f"lfw: MediaPipe landmarks of 40 images read ({cache})" in capsys.readouterr().out
    again = json.loads((tmp_path / "second" / "report.json").read_text())
    assert again["sets"]["lfw"]["accuracy"] == report["sets"]["lfw"]["accuracy"]
    assert again["sets"]["lfw"]["auc"] == report["sets"]["lfw"]["auc"]

    # Told to use the template: a warning, and the report says so.
    with caplog.at_level("WARNING", logger="lafs.landmarks"):
        assert main([*argv, "--output", str(tmp_path / "third"), "--landmarks", "template"]) == 0
    assert "using template, but" in caplog.text and "trained with mediapipe" in caplog.text
    third = json.loads((tmp_path / "third" / "report.json").read_text())
    assert third["landmark_source"] == "template" and third["trained_with"] == "mediapipe"
    assert third["sets"]["lfw"]["landmarks"] == {"source": "template"}
    assert third["sets"]["lfw"]["auc"] != report["sets"]["lfw"]["auc"]
