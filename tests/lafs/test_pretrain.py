import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lafs.config import config_to_dict, load_config
from lafs.data.pairs import write_bin
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig
from lafs.engine import checkpoints
from lafs.engine.run_log import read_log
from lafs.export import load_encoder, recorded_landmark_source
from lafs.models.landmark_predictor import save_landmark_predictor
from lafs.models.released_mobilenet import ReleasedLandmarkNet
from lafs.pretrain import main
from lafs.tasks.pretrain import PretrainConfig, build_models, optimizer_groups
from tests.conftest import ROOT, assert_bad_value_is_one_line, launch_two_processes, write_face_folder
from tests.lafs.models.released_reference import released_landmark_network

TINY = [
    "--config",
    str(ROOT / "configs/pretrain/demo.yaml"),
    "synthetic.num_identities=8",
    "synthetic.images_per_identity=4",
    "views.num_local=2",
    "views.local_landmarks=6",
    "dino.out_dim=64",
    "dino.hidden_dim=32",
    "dino.bottleneck_dim=16",
    "dino.freeze_last_layer_epochs=1",
    "optim.epochs=2",
    "optim.batch_size=8",
    "num_workers=0",
    "log_every=1",
    "checkpoint_every=2",
]


def run(tmp_path: Path, name: str, *extra: str) -> Path:
    out = tmp_path / name
    assert main([*TINY, f"output_dir={out}", *extra]) == 0
    return out


def losses(run_dir: Path) -> list[float]:
    return [record["loss"] for record in read_log(run_dir)]


@pytest.mark.parametrize("make_on", ["accelerator", "loader"])
def test_two_steps_in_process(tmp_path, make_on):
    out = run(tmp_path, "run", "max_steps=2", f"views.make_on={make_on}")
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2]
    assert {"dino_loss", "lr", "teacher_temp", "momentum", "teacher_entropy", "images_per_second"} <= set(log[0])
    assert all(0 < r["loss"] < 10 for r in log)
    assert [p.name for p in checkpoints.checkpoints(out / "checkpoints")] == ["step_00000002"]
    encoder = load_encoder(out / "encoder")
    assert encoder.landmark_set == "mediapipe49"
    assert recorded_landmark_source(out / "encoder") == ("template", True)  # synthetic faces: data.landmarks=template
    assert encoder(torch.zeros(1, 3, 112, 112)).shape == (1, 128)
    assert (out / "config.yaml").exists() and (out / "tensorboard").is_dir()


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # The released table np.linspace(0.07, 0.04, 2)[epoch]: 2 steps of 0.07, then 2 of 0.04.
        ("per_epoch", [0.07, 0.07, 0.04, 0.04]),
        # Ours: a linear ramp over the 4 warm-up steps, step by step.
        ("per_step", [0.07 - 0.03 * step / 4 for step in range(4)]),
    ],
)
def test_teacher_temperature_schedules_in_a_run(tmp_path, schedule, expected):
    # 16 images in batches of 8 are 2 steps per epoch; a warm-up of 2 epochs is 4 steps.
    out = run(
        tmp_path,
        schedule,
        "synthetic.images_per_identity=2",
        "dino.warmup_teacher_temp_epochs=2",
        f"dino.teacher_temp_schedule={schedule}",
    )
    assert [r["teacher_temp"] for r in read_log(out)] == pytest.approx(expected, abs=1e-12)


# The LAFS paper's DINO baseline: the same engine, views on the regular patch grid, a plain ViT over 8 x 8 patches.
PATCHES = ("views.kind=patches", "encoder.landmark_set=grid196", "data.landmark_set=grid196")


# The renderers' agreement is tested in tests/lafs/views: one of them end to end is enough for every run.
@pytest.mark.parametrize("make_on", ["accelerator", pytest.param("loader", marks=pytest.mark.slow)])
def test_patches_pretraining_trains_a_plain_vit(tmp_path, make_on):
    out = run(tmp_path, "patches", "max_steps=2", f"views.make_on={make_on}", *PATCHES)
    assert [r["step"] for r in read_log(out)] == [1, 2] and all(0 < loss < 10 for loss in losses(out))
    encoder = load_encoder(out / "encoder")
    assert encoder.landmark_set == "grid196" and encoder.template[15].tolist() == [12.0, 12.0]  # patch (1, 1)
    assert encoder(torch.zeros(1, 3, 112, 112)).shape == (1, 128)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (("views.kind=patches",), "encoder.landmark_set"),  # mediapipe49 is no patch grid
        (("encoder.landmark_set=grid196", "data.landmark_set=grid196"), "encoder.landmark_set"),  # needs patches
        ((*PATCHES, "data.landmarks=none"), "data.landmarks"),
        ((*PATCHES, "data.landmarks=/some/landmark/cache"), "data.landmarks"),  # never read for patches
        ((*PATCHES, "views.local_size=44"), "views.local_size"),
        ((*PATCHES, "views.image_size=96"), "views.image_size"),
        ((*PATCHES, "encoder.landmark_fit=minmax"), "encoder.landmark_fit"),  # would move tokens off the patches
    ],
)
def test_patches_views_need_a_consistent_set_of_keys(tmp_path, capsys, overrides, key):
    assert_bad_value_is_one_line(main, [*TINY, *overrides], tmp_path / "run", key, capsys)


# Device views are seeded by (step, micro-batch): accumulation over 2 micro-batches replays them on resume too.
@pytest.mark.parametrize("options", [("views.make_on=accelerator", "optim.grad_accum=2"), ("views.make_on=loader",)])
def test_resumed_run_equals_uninterrupted_run(tmp_path, options):
    steps = 4 if "optim.grad_accum=2" in options else 6  # 2 epochs of 4 batches: 4 steps with accumulation
    options = (*options, "deterministic=true")  # bit for bit: deterministic kernels, one thread
    whole = run(tmp_path, "whole", f"max_steps={steps}", *options)
    part = run(tmp_path, "part", "max_steps=3", *options)
    assert len(losses(part)) == 3
    run(tmp_path, "part", f"max_steps={steps}", *options)  # resume=auto continues from the checkpoint at step 3
    assert losses(part) == losses(whole)
    a, b = load_file(whole / "encoder" / "model.safetensors"), load_file(part / "encoder" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kill_during_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "killed"
    original = checkpoints.Accelerator.save_state
    calls = []

    def dying_save(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:  # the second checkpoint: write part of it, then "die"
            Path(output_dir, "partial.bin").write_bytes(b"half")
            raise KeyboardInterrupt
        return original(self, output_dir, **kwargs)

    monkeypatch.setattr(checkpoints.Accelerator, "save_state", dying_save)
    assert main([*TINY, f"output_dir={out}", "max_steps=6"]) == 130  # Ctrl-C: one line, not a traceback
    assert [p.name for p in checkpoints.checkpoints(out / "checkpoints")] == ["step_00000002"]
    assert not (out / "checkpoints" / ".tmp-step_00000004").exists()  # the half-written one is gone
    monkeypatch.undo()
    assert main([*TINY, f"output_dir={out}", "max_steps=6"]) == 0
    assert [r["step"] for r in read_log(out)] == list(range(1, 7))
    assert [p.name for p in checkpoints.checkpoints(out / "checkpoints")][-1] == "step_00000006"


def test_bad_config_is_one_line(tmp_path, capsys):
    assert main([*TINY, f"output_dir={tmp_path}", "encoder.landmark_set=mediapipe196"]) == 2
    assert main([*TINY, f"output_dir={tmp_path}", "resume=/nowhere"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") for e in errors)


@pytest.fixture(scope="module")
def released_network(tmp_path_factory) -> Path:
    network = ReleasedLandmarkNet()
    network.load_state_dict(released_landmark_network())
    return save_landmark_predictor(network.eval(), tmp_path_factory.mktemp("released") / "landmark_predictor")


def test_the_released_landmark_network_places_every_view(tmp_path, released_network, monkeypatch):
    shown = []
    forward = ReleasedLandmarkNet.forward

    def spy(self, images):
        shown.append(tuple(images.shape))
        return forward(self, images)

    monkeypatch.setattr(ReleasedLandmarkNet, "forward", spy)
    sets = ["data.landmark_set=mediapipe196", "encoder.landmark_set=mediapipe196", "optim.batch_size=4"]
    network = f"landmark_predictor={released_network}"
    out = run(tmp_path, "run", "max_steps=1", "views.make_on=accelerator", *sets, network)
    assert shown == [(4 * (2 + 2), 3, 112, 112)]  # every global and local view of the batch, in one pass
    assert 0 < read_log(out)[0]["loss"] < 10


def test_the_released_landmarks_config_is_the_paper_recipe_with_the_network(released_network):
    path = ROOT / "configs/pretrain/lafs_vit_base_webface4m_released_landmarks.yaml"
    cfg = load_config(PretrainConfig, path, [f"landmark_predictor={released_network}", "data.path=synthetic"])
    assert cfg.views.make_on == "accelerator" and cfg.encoder.name == "lafs_vit_base_p8_112"
    assert cfg.data.landmark_set == cfg.encoder.landmark_set == "mediapipe196"


def test_a_landmark_network_of_another_size_is_one_line(tmp_path, released_network, capsys):
    assert main([*TINY, f"output_dir={tmp_path / 'run'}", f"landmark_predictor={released_network}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: landmark_predictor predicts 196 landmarks") and error.count("\n") == 1


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=-1", "optim.lr"),
        ("optim.lr=.inf", "optim.lr"),
        ("optim.min_lr=-1e-6", "optim.min_lr"),
        ("optim.min_lr=1", "optim.min_lr"),
        ("optim.weight_decay=-0.1", "optim.weight_decay"),
        ("optim.weight_decay_end=-1", "optim.weight_decay_end"),
        ("optim.warmup_epochs=99", "optim.warmup_epochs"),
        ("dino.out_dim=0", "dino.out_dim"),
        ("dino.hidden_dim=0", "dino.hidden_dim"),
        ("dino.bottleneck_dim=-1", "dino.bottleneck_dim"),
        ("dino.student_temp=0", "dino.student_temp"),
        ("dino.teacher_temp=-0.04", "dino.teacher_temp"),
        ("dino.warmup_teacher_temp=.nan", "dino.warmup_teacher_temp"),
        ("dino.warmup_teacher_temp_epochs=-1", "dino.warmup_teacher_temp_epochs"),
        ("dino.momentum_teacher=1.5", "dino.momentum_teacher"),
        ("dino.center_momentum=-0.1", "dino.center_momentum"),
        ("dino.freeze_last_layer_epochs=-1", "dino.freeze_last_layer_epochs"),
        ("num_workers=-1", "num_workers"),
        ("max_steps=-1", "max_steps"),
        ("synthetic.num_identities=0", "synthetic.num_identities"),
        ("synthetic.max_yaw=90", "synthetic.max_yaw"),
        ("landmark_predictor=/nowhere", "landmark_predictor"),
    ],
)
def test_bad_value_is_one_line_naming_its_key(tmp_path, capsys, override, key):
    assert_bad_value_is_one_line(main, [*TINY, override], tmp_path / "run", key, capsys)


def test_two_processes_through_accelerate_launch(tmp_path):
    out = tmp_path / "ddp"
    launch_two_processes(
        "lafs/pretrain.py",
        *TINY,
        f"output_dir={out}",
        "max_steps=3",
        "dump_rank_weights=true",
        "optim.batch_size=4",
    )
    hashes = [(out / f"weights_rank{rank}.sha256").read_text() for rank in range(2)]
    assert hashes[0] == hashes[1]
    assert [r["step"] for r in read_log(out)] == [1, 2, 3]


def test_teacher_verification_during_training(tmp_path):
    faces = SyntheticFaces(SyntheticFacesConfig(num_identities=4, images_per_identity=2, landmark_set="mediapipe49"))
    images = [faces[i]["image"] for i in range(8)]
    pairs = [(images[0], images[1]), (images[0], images[2]), (images[4], images[5]), (images[3], images[6])]
    write_bin(tmp_path / "pairs.bin", pairs, [True, False, True, False])
    out = run(tmp_path, "verified", "max_steps=2", f"eval_bins=[{tmp_path / 'pairs.bin'}]", "eval_every=2")
    record = read_log(out)[-1]
    assert 0.0 <= record["pairs_accuracy"] <= 1.0 and record["mean_accuracy"] == record["pairs_accuracy"]
    assert record["best_mean_accuracy"] == record["mean_accuracy"]
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["step"] == 2 and (out / "best" / "encoder" / "config.json").is_file()
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gradient_accumulation_counts_optimiser_steps(tmp_path):
    # 32 images, batch 4, 2 micro-batches per step: 4 optimiser steps per epoch, schedules over 8.
    out = run(tmp_path, "accum", "optim.batch_size=4", "optim.grad_accum=2", "max_steps=3")
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3]
    assert log[0]["epoch"] == 0.25


def test_uneven_accumulation_uses_whole_cycles(tmp_path):
    # 32 images, batch 4: 8 batches per epoch, 3 per optimiser step -> 2 steps, the last 2 batches left out.
    out = run(tmp_path, "uneven", "optim.batch_size=4", "optim.grad_accum=3", "max_steps=3")
    assert [(r["step"], r["epoch"]) for r in read_log(out)] == [(1, 0.5), (2, 1.0), (3, 1.5)]


def test_no_decay_for_tokenizer_positions_biases_and_norms():
    cfg = load_config(PretrainConfig, ROOT / "configs/pretrain/demo.yaml", ["dino.out_dim=64", "dino.hidden_dim=32"])
    student, _ = build_models(cfg)
    names = {id(p): n for n, p in student.named_parameters()}
    no_decay, decay = optimizer_groups(student, 0.04)
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert {"backbone.pos_embed", "backbone.cls_token", "backbone.patch_embed.proj.weight"} <= undecayed
    assert "backbone.blocks.0.attn.qkv.weight" in {names[id(p)] for p in decay["params"]}
    assert decay["scheduled_decay"] and not no_decay["scheduled_decay"]
    no_decay, decay = optimizer_groups(student, 0.04, decay_embeddings=True)  # as released: only biases and norms
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"backbone.pos_embed", "backbone.cls_token", "backbone.patch_embed.proj.weight"} <= decayed
    assert all(p.ndim <= 1 for p in no_decay["params"])


def test_a_planted_pickle_in_the_run_directory_never_runs(tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (str(marker),))

    out = run(tmp_path, "run", "max_steps=2")
    step = out / "checkpoints" / "step_00000002"
    (step / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload()))  # what resume=auto would find
    assert main([*TINY, f"output_dir={out}", "max_steps=3"]) == 0 and not marker.exists()  # never unpickled
    # A checkpoint in the earlier, pickled layout is read with weights_only=True: the payload is refused.
    step = out / "checkpoints" / "step_00000003"
    for name in ("task_state.safetensors", "train_state.json"):
        (step / name).unlink()
    for i in range(3):  # teacher, DINO loss, train state
        (step / f"custom_checkpoint_{i}.pkl").write_bytes(pickle.dumps(Payload()))
    assert main([*TINY, f"output_dir={out}", "max_steps=4", "resume=" + str(step)]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert error.startswith("error: ") and "cannot load this checkpoint" in error and not marker.exists()


def _dotted(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        flat.update(_dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def test_dino_baseline_config_is_the_lafs_recipe_over_patches():
    lafs, dino = (
        _dotted(config_to_dict(load_config(PretrainConfig, ROOT / f"configs/pretrain/{name}_vit_base_webface4m.yaml")))
        for name in ("lafs", "dino")
    )
    changed = {key for key in lafs if lafs[key] != dino[key]}
    assert changed == {"output_dir", "data.landmarks", "data.landmark_set", "encoder.landmark_set", "views.kind"}
    assert dino["views.kind"] == "patches" and dino["encoder.landmark_set"] == dino["data.landmark_set"] == "grid196"


def test_mediapipe_landmarks_are_computed_once_and_recorded(tmp_path):
    """data.landmarks=mediapipe on a plain face folder: the run computes the cache beside the data, trains on it,
    records it (config.yaml, the encoder's landmark source), and a second run finds it instead of recomputing."""
    root, _ = write_face_folder(tmp_path / "faces", identities=4, per_identity=4)
    data = [f"data.path={root}", "data.landmarks=mediapipe", "max_steps=1"]
    out = run(tmp_path, "first", *data)
    cache = tmp_path / "faces.landmarks-mediapipe49-112"
    assert (cache / "meta.json").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["landmarks"] == str(cache)
    assert recorded_landmark_source(out / "encoder") == ("mediapipe", True)
    stamp = (cache / "meta.json").stat().st_mtime_ns
    run(tmp_path, "second", *data)
    assert (cache / "meta.json").stat().st_mtime_ns == stamp  # found, not recomputed
