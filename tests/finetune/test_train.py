"""The fine-tuning entry point: configs, layer decay, few-shot, init, validation, resume, augmentation."""

import csv
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.heads import MarginHead
from finetune.model import FinetuneModel
from finetune.objective import build_objective
from finetune.regularisers import RegularisersConfig
from finetune.task import OptimConfig, Schedule, build_optimizer
from finetune.train import main
from lafs.data.pairs import write_bin
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig, synthetic_pairs
from lafs.engine.run_log import read_log
from lafs.export import load_encoder, save_encoder
from lafs.export.released import import_released_checkpoint
from lafs.models import EncoderConfig, PartFViT, build_encoder
from lafs.models.landmark_predictor import LandmarkPredictorConfig, build_landmark_predictor, load_landmark_predictor
from lafs.models.released_mobilenet import ReleasedLandmarkNet
from tests.conftest import ROOT, assert_bad_value_is_one_line, launch_two_processes
from tests.lafs.models.released_reference import released_supervised

CONFIGS = sorted((ROOT / "configs/finetune").glob("*.yaml"))
# Any config of configs/finetune shrunk to seconds on CPU: tiny synthetic data, the nano encoder, 2 steps.
TINY = [
    "init=''",
    "data.path=synthetic",
    "data.landmarks=template",
    "data.landmark_set=mediapipe49",
    "data.shots=null",
    "synthetic.num_identities=8",
    "synthetic.images_per_identity=4",
    "encoder.name=lafs_vit_nano_p8_112",
    "encoder.landmark_set=mediapipe49",
    "landmarks.predictor=''",
    "landmarks.predictor_backbone=mobilenetv3_small_050",
    "eval_bins=[]",
    "optim.batch_size=8",
    "optim.grad_accum=1",
    "optim.epochs=2",
    "optim.warmup_epochs=1",
    "max_steps=2",
    "mixed_precision='no'",
    "num_workers=0",
    "log_every=1",
    "checkpoint_every=2",
]
DEMO = ["--config", str(ROOT / "configs/finetune/demo.yaml"), *TINY]


def run(out: Path, *extra: str, config: list[str] = DEMO) -> Path:
    assert main([*config, f"output_dir={out}", *extra]) == 0
    return out


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_runs_two_steps(tmp_path, config):
    out = run(tmp_path / config.stem, config=["--config", str(config), *TINY])
    log = read_log(out)
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in log if "loss" in r)
    assert (out / "encoder" / "model.safetensors").is_file()


def test_layer_decay_groups():
    encoder = build_encoder(EncoderConfig(name="lafs_vit_nano_p8_112", landmark_set="mediapipe49"))
    predictor = build_landmark_predictor(
        LandmarkPredictorConfig(backbone="mobilenetv3_small_050", landmark_set="mediapipe49")
    )
    objective = build_objective(
        MarginHead(4, encoder.num_features),
        RegularisersConfig(),
        num_classes=4,
        embed_dim=encoder.num_features,
        num_samples=8,
    )
    model = FinetuneModel(encoder, objective, predictor)
    optimizer = build_optimizer(model, OptimConfig(layer_decay=0.58, weight_decay=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    decay = {names[id(p)]: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    depth = len(encoder.blocks)
    last = depth + 1  # the stem, the blocks, then the head
    assert scale["encoder.patch_embed.proj.weight"] == pytest.approx(0.58**last)
    assert scale["encoder.pos_embed"] == scale["encoder.cls_token"] == scale["encoder.patch_embed.proj.weight"]
    assert all(scale[n] == pytest.approx(0.58**last) for n in scale if n.startswith("landmark_predictor."))
    assert scale["encoder.blocks.0.attn.qkv.weight"] == pytest.approx(0.58 ** (last - 1))
    assert scale[f"encoder.blocks.{depth - 1}.mlp.fc1.weight"] == pytest.approx(0.58)
    assert scale["objective.head.weight"] == 1.0  # unmatched: the full rate, like timm's classifier
    assert scale["encoder.norm.weight"] == pytest.approx(0.58)  # timm ranks the final norm with the last block
    assert decay["encoder.pos_embed"] == decay["encoder.patch_embed.proj.weight"] == decay["encoder.norm.weight"] == 0
    assert decay["encoder.blocks.0.attn.qkv.weight"] == decay["objective.head.weight"] == 0.1
    assert set(scale) == set(names.values())


def test_warmup_cosine_per_step_and_batch_scaling():
    schedule = Schedule(OptimConfig(epochs=10, warmup_epochs=2, lr=1e-3, lr_reference_batch=100, min_lr=0), 5, 400)
    assert schedule.base_lr == pytest.approx(2e-3)  # sqrt(400 / 100) = 2
    assert schedule.lr(0) == 0.0 and schedule.lr(9) == pytest.approx(2e-3)
    assert schedule.lr(10) == pytest.approx(2e-3) and schedule.lr(50) == pytest.approx(0.0)
    assert schedule.lr(30) == pytest.approx(1e-3)  # half-way through the cosine
    linear = Schedule(OptimConfig(lr=1e-3, lr_reference_batch=100, lr_scaling="linear"), 5, 400)
    assert linear.base_lr == pytest.approx(4e-3)


def test_few_shot_list_is_saved(tmp_path):
    out = run(tmp_path / "shots", "data.shots=2")
    with open(out / "few_shot.csv") as f:
        rows = list(csv.DictReader(f))
    labels = [int(r["label"]) for r in rows]
    assert len(rows) == 16 and all(labels.count(i) == 2 for i in range(8))
    again = run(tmp_path / "again", "data.shots=2")
    assert (again / "few_shot.csv").read_text() == (out / "few_shot.csv").read_text()


def test_init_from_an_encoder_folder_or_a_pretraining_run(tmp_path):
    encoder = build_encoder(EncoderConfig(name="lafs_vit_nano_p8_112", landmark_set="mediapipe49"))
    torch.nn.init.normal_(encoder.pos_embed, std=0.5)
    save_encoder(encoder, tmp_path / "pretrain" / "encoder")
    for init in (tmp_path / "pretrain", tmp_path / "pretrain" / "encoder"):
        out = run(tmp_path / f"from_{init.name}", f"init={init}", "max_steps=0")
        final, start = weights(out / "encoder"), weights(tmp_path / "pretrain" / "encoder")
        assert all(torch.equal(final[k], start[k]) for k in start)


def test_init_from_an_imported_released_model_trains_its_landmark_network(tmp_path, capsys):
    torch.save(released_supervised(), tmp_path / "released.pth")
    import_released_checkpoint(tmp_path / "released.pth", tmp_path / "imported")
    released = ["data.landmark_set=mediapipe196", "encoder.landmark_set=mediapipe196", f"init={tmp_path / 'imported'}"]
    assert main([*DEMO, f"output_dir={tmp_path / 'wrong'}", *released]) == 2  # MediaPipe points would be wrong
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "landmarks.source=predictor landmarks.predictor=" in error
    network = tmp_path / "imported" / "landmark_predictor"
    placed = ["landmarks.source=predictor", f"landmarks.predictor={network}"]
    out = run(tmp_path / "run", *released, *placed, "max_steps=1", "optim.warmup_epochs=0")
    trained = load_landmark_predictor(out / "landmark_predictor")
    assert isinstance(trained, ReleasedLandmarkNet) and isinstance(load_encoder(out / "encoder"), PartFViT)
    start = weights(network)
    assert not torch.equal(weights(out / "landmark_predictor")["output_layer.1.weight"], start["output_layer.1.weight"])


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    exact = "deterministic=true"  # bit for bit: deterministic kernels, one thread
    whole = run(tmp_path / "whole", "max_steps=4", "checkpoint_every=100", exact)
    part = run(tmp_path / "part", "max_steps=2", "checkpoint_every=2", exact)
    run(part, "max_steps=4", "checkpoint_every=100", exact)
    assert [r["step"] for r in read_log(part) if "loss" in r] == [1, 2, 3, 4]
    a, b = weights(whole / "encoder"), weights(part / "encoder")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_validation_keeps_the_best_encoder(tmp_path):
    faces = SyntheticFaces(SyntheticFacesConfig(num_identities=6, images_per_identity=3, landmark_set="mediapipe49"))
    images, issame = synthetic_pairs(faces, 20)
    write_bin(tmp_path / "held_out.bin", list(zip(images[0::2], images[1::2], strict=True)), issame)
    out = run(tmp_path / "run", f"eval_bins=[{tmp_path / 'held_out.bin'}]", "eval_every=1")
    records = [r for r in read_log(out) if "mean_accuracy" in r]
    assert [r["step"] for r in records] == [1, 2]
    best = max(r["mean_accuracy"] for r in records)
    assert records[-1]["best_mean_accuracy"] == best
    assert (out / "best" / "encoder" / "model.safetensors").is_file()
    assert '"held_out_accuracy"' in (out / "best" / "best.json").read_text()


def test_trainable_predictor_and_landmark_regulariser_are_saved(tmp_path):
    out = run(tmp_path / "lafs", "landmarks.source=predictor", "regularisers.landmark.enabled=true")
    log = [r for r in read_log(out) if "loss" in r]
    assert log[0]["lambda_landmark"] == 1000 and "landmark_loss" in log[0]
    assert (out / "landmark_predictor" / "model.safetensors").is_file()


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert main([*DEMO, f"output_dir={tmp_path}", f"init={tmp_path / 'nowhere'}"]) == 2
    assert main([*DEMO, f"output_dir={tmp_path}", "regularisers.landmark.enabled=true"]) == 2
    assert main([*DEMO, f"output_dir={tmp_path}", "head.name=sphereface"]) == 2
    assert main([*DEMO, f"output_dir={tmp_path}", f"eval_bins=[{tmp_path / 'lfw.bin'}]"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(e.startswith("error: ") for e in errors)


@pytest.mark.parametrize("size", [0, 1000], ids=["empty", "truncated"])
def test_init_with_cut_short_weights_is_one_line(tmp_path, capsys, size):
    encoder = build_encoder(EncoderConfig(name="lafs_vit_nano_p8_112", landmark_set="mediapipe49"))
    weights = save_encoder(encoder, tmp_path / "encoder") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:size])
    assert main([*DEMO, f"output_dir={tmp_path / 'run'}", f"init={tmp_path / 'encoder'}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {weights}: unreadable weights") and error.count("\n") == 1


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=-1", "optim.lr"),
        ("optim.lr=.nan", "optim.lr"),
        ("optim.min_lr=-1e-6", "optim.min_lr"),
        ("optim.min_lr=1", "optim.min_lr"),
        ("optim.weight_decay=-0.1", "optim.weight_decay"),
        ("optim.warmup_epochs=99", "optim.warmup_epochs"),
        ("num_workers=-1", "num_workers"),
        ("max_steps=-1", "max_steps"),
        ("synthetic.num_identities=0", "synthetic.num_identities"),
        ("synthetic.blur_prob=2", "synthetic.blur_prob"),
    ],
)
def test_bad_value_is_one_line_naming_its_key(tmp_path, capsys, override, key):
    assert_bad_value_is_one_line(main, [*DEMO, override], tmp_path / "run", key, capsys)


def test_predictor_run_exports_an_images_only_model(tmp_path):
    from lafs.export import OnnxEncoder, load_any_encoder
    from lafs.models.image_encoder import ImageEncoder
    from tools.export import main as export_main

    out = run(tmp_path / "lafs", "landmarks.source=predictor", "max_steps=1")
    model = load_any_encoder(out)
    assert isinstance(model, ImageEncoder) and model.landmark_predictor is not None
    assert export_main(["--input", str(out), "--output", str(tmp_path / "export"), "--onnx", "--faces", "2"]) == 0
    onnx = OnnxEncoder(tmp_path / "export" / "model_images_only.onnx")
    images = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(onnx(images), model.eval()(images), atol=1e-4)
    assert isinstance(load_any_encoder(tmp_path / "export"), ImageEncoder)


def test_two_processes_with_every_cross_process_regulariser(tmp_path):
    """gloo on the CPU: DDP keeps encoder and head in step; UNPG gathers pairs and clustering broadcasts its tables."""
    out = tmp_path / "ddp"
    launch_two_processes(
        "finetune/train.py",
        "--config",
        str(ROOT / "configs/finetune/arcface_cluster.yaml"),
        *TINY,
        f"output_dir={out}",
        "max_steps=4",
        "optim.batch_size=4",
        "dump_rank_weights=true",
        "regularisers.unpg.enabled=true",
        "regularisers.unpg.gather=true",
        "regularisers.cluster.recluster_every_epochs=0.5",
        "regularisers.cluster.min_fill=0.1",
        "regularisers.cluster.weight.start_epoch=0",
    )
    hashes = [(out / f"weights_rank{rank}.sha256").read_text() for rank in range(2)]
    assert hashes[0] == hashes[1]
    log = [r for r in read_log(out) if "loss" in r]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and "unpg_loss" in log[0] and "scc_loss" in log[-1]
