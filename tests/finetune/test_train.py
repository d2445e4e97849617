"""The fine-tuning entry point: configs, layer decay, few-shot, init, validation, resume, augmentation."""

import csv
import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from finetune.heads import MarginHead
from finetune.model import FinetuneModel
from finetune.objective import build_objective
from finetune.regularisers import RegularisersConfig
from finetune.task import FinetuneConfig, FinetuneOptimConfig, build_optimizer, learning_rate_schedule
from finetune.train import main
from lafs.config import load_config
from lafs.data.pairs import write_bin
from lafs.data.synthetic import SyntheticFaces, SyntheticFacesConfig, synthetic_pairs
from lafs.engine.run_log import read_log
from lafs.export import load_encoder, save_encoder
from lafs.export.released import import_released_checkpoint
from lafs.landmarks.cache import CacheInfo, LandmarkCache
from lafs.landmarks.sources import scaled_template
from lafs.models import EncoderConfig, PartFViT, build_any_encoder, build_encoder
from lafs.models.landmark_predictor import LandmarkPredictorConfig, build_landmark_predictor, load_landmark_predictor
from lafs.models.released_mobilenet import ReleasedLandmarkNet
from tests.conftest import ROOT, assert_bad_value_is_one_line, launch_two_processes, write_face_folder
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


def nano_model() -> FinetuneModel:
    """The nano encoder with a trainable landmark predictor and a 4-class head."""
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
        optim=FinetuneOptimConfig(),
    )
    return FinetuneModel(encoder, objective, predictor)


def test_layer_decay_groups():
    model = nano_model()
    encoder = model.encoder
    optimizer = build_optimizer(model, FinetuneOptimConfig(layer_decay=0.58, weight_decay=0.1))
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


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.stem != "demo"], ids=lambda p: p.stem)
def test_recipe_configs_train_every_layer_at_the_full_rate(config):
    # The released code builds 0.58 layer-decay groups but never applies them: its recipe is layer_decay 1.0.
    optim = load_config(FinetuneConfig, config, ["eval_bins=[]"]).optim  # (the data is not here)
    assert optim.layer_decay == 1.0
    model = nano_model()
    optimizer = build_optimizer(model, optim)
    assert {g["lr_scale"] for g in optimizer.param_groups} == {1.0}  # what the engine multiplies each group's lr by
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_warmup_cosine_per_step_and_batch_scaling():
    optim = FinetuneOptimConfig(epochs=10, warmup_epochs=2, lr=1e-3, lr_reference_batch=100, min_lr=0)
    schedule = learning_rate_schedule(optim, 5, 400)
    assert schedule.peak == pytest.approx(2e-3)  # sqrt(400 / 100) = 2
    assert schedule(0) == 0.0 and schedule(9) == pytest.approx(2e-3)
    assert schedule(10) == pytest.approx(2e-3) and schedule(50) == pytest.approx(0.0)
    assert schedule(30) == pytest.approx(1e-3)  # half-way through the cosine
    linear = learning_rate_schedule(FinetuneOptimConfig(lr=1e-3, lr_reference_batch=100, lr_scaling="linear"), 5, 400)
    assert linear.peak == pytest.approx(4e-3)


def test_relative_warmup_is_stretched_from_lafs_34_epochs(caplog):
    """LAFS's 5 of 34 warm-up epochs in a 17-epoch run of 4 steps per epoch: 2.5 epochs, 10 steps (logged once)."""
    cfg = FinetuneOptimConfig(
        epochs=17, warmup_epochs=5, lr=1e-3, lr_reference_batch=100, min_lr=0, schedules="relative"
    )
    with caplog.at_level(logging.INFO, logger="lafs.finetune"):
        schedule = learning_rate_schedule(cfg, 4, 100)
    assert schedule.warmup_steps == 10 and schedule(9) == pytest.approx(1e-3) and schedule(4) < 1e-3
    assert "optim.warmup_epochs 5 -> 2.5" in caplog.text
    assert learning_rate_schedule(dataclasses.replace(cfg, schedules="epochs"), 4, 100).warmup_steps == 20  # 5 epochs


def test_relative_schedules_through_a_run(tmp_path):
    """CoReFace's switch at 7 of its 24 epochs, in a 2-epoch run of 4 steps: epoch 7 / 12 = 0.583, so from the 4th
    step (epoch 0.75) on; as written it would come after the run."""
    coreface = ["regularisers.coreface.enabled=true", "max_steps=4"]
    relative = run(tmp_path / "relative", *coreface, "optim.schedules=relative")
    assert [r["lambda_coreface"] for r in read_log(relative)] == [0.0, 0.0, 0.0, 0.05]
    written = run(tmp_path / "written", *coreface)
    assert [r["lambda_coreface"] for r in read_log(written)] == [0.0] * 4


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


def test_an_imported_classifier_is_continued_when_the_classes_match(tmp_path, caplog):
    from finetune.heads import HeadConfig, build_head
    from finetune.task import start_from_imported_head
    from lafs.export.released import load_released_head

    torch.save(released_supervised(classes=10), tmp_path / "released.pth")
    import_released_checkpoint(tmp_path / "released.pth", tmp_path / "imported")
    cfg = FinetuneConfig(init=str(tmp_path / "imported"))
    imported = load_released_head(tmp_path / "imported")
    assert imported is not None
    head = build_head(HeadConfig(name="cosface"), 10, imported.shape[1])
    start_from_imported_head(cfg, head)
    assert torch.equal(head.weight.detach(), imported)
    other = build_head(HeadConfig(name="cosface"), 7, imported.shape[1])
    before = other.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="lafs.finetune"):
        start_from_imported_head(cfg, other)
    assert torch.equal(other.weight.detach(), before) and "the head starts untrained" in caplog.text


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
    assert (out / "learning_curve.png").stat().st_size > 0  # accuracy against the step, redrawn at each validation
    for encoder in (out / "encoder", out / "best" / "encoder"):  # trained and validated on the template
        assert json.loads((encoder / "config.json").read_text())["landmark_source"] == "template"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held_out.bin", "run"]  # no landmark cache


def test_training_on_mediapipe_landmarks_validates_and_records_them(tmp_path):
    """A MediaPipe landmark cache for training: the eval set gets MediaPipe landmarks, cached beside it, once."""
    root, items = write_face_folder(tmp_path / "faces", identities=3, per_identity=4)
    cache = LandmarkCache.create(tmp_path / "cache", CacheInfo(str(root), len(items), "mediapipe49", 112, "test"))
    template = scaled_template("mediapipe49", 112, 112)  # stands in for MediaPipe's: the values do not matter here
    cache.write(np.arange(len(items)), np.repeat(template[None], len(items), 0), np.ones(len(items), bool))
    cache.flush()
    faces = SyntheticFaces(SyntheticFacesConfig(num_identities=4, images_per_identity=3, landmark_set="mediapipe49"))
    images, issame = synthetic_pairs(faces, 10)
    write_bin(tmp_path / "held_out.bin", list(zip(images[0::2], images[1::2], strict=True)), issame)
    data = [f"data.path={root}", f"data.landmarks={tmp_path / 'cache'}", "data.shots=null", "optim.batch_size=4"]
    out = run(tmp_path / "run", *data, f"eval_bins=[{tmp_path / 'held_out.bin'}]", "eval_every=1", "max_steps=1")
    landmarks = tmp_path / "held_out.bin.landmarks-mediapipe49.npz"
    assert landmarks.is_file()
    for encoder in (out / "encoder", out / "best" / "encoder"):
        assert json.loads((encoder / "config.json").read_text())["landmark_source"] == "mediapipe"
    written = landmarks.stat().st_mtime_ns
    run(tmp_path / "again", *data, f"eval_bins=[{tmp_path / 'held_out.bin'}]", "eval_every=1", "max_steps=1")
    assert landmarks.stat().st_mtime_ns == written  # read, not computed again


def test_trainable_predictor_and_landmark_regulariser_are_saved(tmp_path):
    out = run(tmp_path / "lafs", "landmarks.source=predictor", "regularisers.landmark.enabled=true")
    log = [r for r in read_log(out) if "loss" in r]
    assert log[0]["lambda_landmark"] == 1000 and "landmark_loss" in log[0]
    assert (out / "landmark_predictor" / "model.safetensors").is_file()
    assert json.loads((out / "encoder" / "config.json").read_text())["landmark_source"] == "predictor"


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
        ("augment.crop_scale=[0.5,1.5]", "augment.crop_scale"),
        ("augment.color_jitter=0.6", "augment.color_jitter"),
        ("augment.erasing=2", "augment.erasing"),
        ("augment.randaugment=11", "augment.randaugment"),
        ("head.partial_fc.sample_rate=0", "head.partial_fc.sample_rate"),
    ],
)
def test_bad_value_is_one_line_naming_its_key(tmp_path, capsys, override, key):
    assert_bad_value_is_one_line(main, [*DEMO, override], tmp_path / "run", key, capsys)


def test_an_eval_bin_of_no_pairs_is_refused_before_writing(tmp_path, capsys):
    # It used to fail at the first validation, after config.yaml was written into the run directory.
    (tmp_path / "junk.bin").write_text("not a pair set\n")
    arguments = [*DEMO, f"eval_bins=[{tmp_path / 'junk.bin'}]"]
    assert_bad_value_is_one_line(main, arguments, tmp_path / "run", "eval_bins:", capsys)


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


# -- Partial FC ---------------------------------------------------------------------------------------------------

PARTIAL_FC = [
    "head.name=arcface",
    "head.partial_fc.enabled=true",
    "head.partial_fc.sample_rate=0.5",
    "synthetic.num_identities=63",  # shards of 32 and 31 classes on 2 processes
    "synthetic.images_per_identity=1",  # a step's 8 images span at most 8 of the 32 sampled: the others are drawn
]


def shard_files(step_dir: Path, processes: int) -> list[dict[str, torch.Tensor]]:
    return [load_file(str(step_dir / f"task_state_0_rank{rank}.safetensors")) for rank in range(processes)]


@pytest.mark.parametrize("name", ["intraloss", "cluster"])
def test_partial_fc_refuses_regularisers_that_read_every_centre(tmp_path, capsys, name):
    arguments = [*DEMO, *PARTIAL_FC, "head.name=arcface", f"regularisers.{name}.enabled=true"]
    assert_bad_value_is_one_line(main, arguments, tmp_path / "run", f"regularisers.{name}", capsys)


def test_partial_fc_resumed_run_equals_uninterrupted_run(tmp_path):
    """The sampled classes replay (seeded by step and micro-batch): 2 + 2 steps end where 4 steps do."""
    exact = ["deterministic=true", *PARTIAL_FC, "augment.mixup_prob=0.5"]
    whole = run(tmp_path / "whole", "max_steps=4", "checkpoint_every=100", *exact)
    part = run(tmp_path / "part", "max_steps=2", "checkpoint_every=2", *exact)
    run(part, "max_steps=4", "checkpoint_every=100", *exact)
    a, b = weights(whole / "encoder"), weights(part / "encoder")
    assert all(torch.equal(a[k], b[k]) for k in a)
    (ours,), (theirs,) = (shard_files(out / "checkpoints" / "step_00000004", 1) for out in (part, whole))
    assert set(ours) == {"weight", "classes", "optimizer.step", "optimizer.exp_avg", "optimizer.exp_avg_sq"}
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not any("head" in name for name in weights(whole / "checkpoints" / "step_00000004"))


def test_partial_fc_checkpoint_of_two_processes_resumes_on_one_and_on_two(tmp_path):
    """gloo: DDP keeps the encoders equal (clipping included) while each process trains its shard; the checkpoint
    holds both shards and their AdamW state, which a 1-process run reassembles and a 2-process run gets back."""
    script = "tests/finetune/partial_fc_run.py"
    arguments = [*DEMO, *PARTIAL_FC, "optim.batch_size=4", "optim.clip_grad=1.0", "augment.mixup_prob=0.5",
                 "regularisers.unpg.enabled=true"]  # fmt: skip
    two = tmp_path / "two"
    launch_two_processes(script, *arguments, f"output_dir={two}", "max_steps=2", "dump_rank_weights=true")
    assert (two / "weights_rank0.sha256").read_text() == (two / "weights_rank1.sha256").read_text()
    saved = shard_files(two / "checkpoints" / "step_00000002", 2)
    assert [s["classes"].tolist() for s in saved] == [[0, 32, 63], [32, 63, 63]]
    assert all(s["optimizer.step"].item() == 2 for s in saved)
    keys = ("weight", "optimizer.exp_avg", "optimizer.exp_avg_sq")
    whole = {key: torch.cat([s[key] for s in saved]) for key in keys}

    one = tmp_path / "one"
    shutil.copytree(two, one)
    from tests.finetune.partial_fc_run import main as run_with_dump

    # One process keeps the two's 8 images per step with 2 micro-batches: it resumes, then trains step 3.
    assert run_with_dump([*arguments, f"output_dir={one}", "max_steps=3", "optim.grad_accum=2"]) == 0
    loaded = load_file(str(one / "loaded_rank0.safetensors"))
    assert loaded["classes"].tolist() == [0, 63, 63] and loaded["optimizer.step"].item() == 2
    assert all(torch.equal(loaded[key], whole[key]) for key in keys)
    assert [r["step"] for r in read_log(one) if "loss" in r][-1] == 3

    again = tmp_path / "again"
    shutil.copytree(two, again)
    launch_two_processes(script, *arguments, f"output_dir={again}", "max_steps=2")  # resume only: nothing to train
    for rank, shard in enumerate(saved):
        loaded = load_file(str(again / f"loaded_rank{rank}.safetensors"))
        assert set(loaded) == set(shard) and all(torch.equal(loaded[key], shard[key]) for key in shard)


# -- every seed loss on every kind of encoder -------------------------------------------------------------------------

# Tiny widths keep each backbone to seconds; the ViT is TINY's nano one.
BACKBONES = {
    "iresnet50": ["encoder.name=iresnet50", "encoder.model_args={widths: [8, 8, 16, 16]}", "encoder.embed_dim=32"],
    "convnext": ["encoder.name=timm:test_convnext", "encoder.embed_dim=32"],
    "landmark_vit": [],
}
SEED_LOSSES = ("unpg", "coreface", "intraloss", "cluster")
IRESNET_CONFIGS = [ROOT / f"configs/finetune/iresnet100_arcface_{loss}.yaml" for loss in SEED_LOSSES]
EVERY_TERM_AT_ONCE = [  # each regulariser's term from the first step (their schedules start later by default)
    "regularisers.coreface.phase2_epoch=0",
    "regularisers.coreface.weight.start_epoch=0",
    "regularisers.intraloss.weight.start_epoch=0",
    "regularisers.cluster.weight.start_epoch=0",
    "regularisers.cluster.recluster_every_epochs=0.25",
    "regularisers.cluster.min_fill=0.1",
]


def seed_loss_run(out: Path, backbone: str, config: Path, *extra: str) -> list[dict]:
    run(out, *BACKBONES[backbone], *EVERY_TERM_AT_ONCE, *extra, config=["--config", str(config), *TINY])
    log = [r for r in read_log(out) if "loss" in r]
    assert [r["step"] for r in log] == [1, 2] and all(math.isfinite(v) for r in log for v in r.values())
    name = load_config_yaml(out)["encoder"]["name"]
    assert name == {"iresnet50": "iresnet50", "convnext": "timm:test_convnext"}.get(backbone, "lafs_vit_nano_p8_112")
    return log


def load_config_yaml(out: Path) -> dict:
    import yaml

    return yaml.safe_load((out / "config.yaml").read_text())


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_seed_loss_on_every_backbone(tmp_path, backbone):
    """UNPG, CoReFace (two dropout views), IntraLoss and cluster-guided margins together, 2 SGD steps (the
    iresnet100 recipe), on a tiny IResNet-50, a timm ConvNeXt and the landmark ViT; the encoder exports and reloads."""
    out = tmp_path / backbone
    switched_on = [f"regularisers.{name}.enabled=true" for name in SEED_LOSSES]
    log = seed_loss_run(out, backbone, IRESNET_CONFIGS[0], *switched_on)
    for term in ("margin_loss", "unpg_loss", "coreface_loss", "intraloss_loss", "scc_loss", "align_loss"):
        assert term in log[0]
    assert log[0]["unpg_loss"] > 0 and log[0]["coreface_loss"] > 0 and log[0]["intraloss_loss"] > 0
    encoder = load_encoder(out / "encoder")
    assert encoder.num_features == (128 if backbone == "landmark_vit" else 32)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("config", IRESNET_CONFIGS, ids=lambda p: p.stem)
def test_each_seed_loss_config_on_each_backbone(tmp_path, config, backbone):
    """Each iresnet100_arcface_* recipe on its own (its regulariser alone), on each backbone."""
    log = seed_loss_run(tmp_path / backbone, backbone, config)
    loss = config.stem.removeprefix("iresnet100_arcface_")
    assert ("scc_loss" if loss == "cluster" else f"{loss}_loss") in log[-1]


@pytest.mark.parametrize("backbone", ["iresnet50", "convnext"])
def test_landmark_options_with_an_image_only_encoder_are_one_line(tmp_path, capsys, backbone):
    lafs = ["landmarks.source=predictor", "regularisers.landmark.enabled=true"]
    assert main([*DEMO, *BACKBONES[backbone], *lafs, f"output_dir={tmp_path / 'run'}"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(
        "error: landmarks.source=predictor and regularisers.landmark need a landmark-token encoder (lafs_vit_*): "
    )
    assert error.rstrip().endswith("reads images only")


def test_init_from_an_exported_iresnet(tmp_path):
    encoder = build_any_encoder(EncoderConfig(name="iresnet18", embed_dim=32, model_args={"widths": [4, 4, 8, 8]}))
    save_encoder(encoder, tmp_path / "resnet")
    out = run(tmp_path / "run", f"init={tmp_path / 'resnet'}", "max_steps=0")
    final, start = weights(out / "encoder"), weights(tmp_path / "resnet")
    assert final.keys() == start.keys() and all(torch.equal(final[k], start[k]) for k in start)
    assert load_config_yaml(out)["encoder"]["name"] == "iresnet18"


@pytest.mark.slow
def test_two_processes_with_an_iresnet(tmp_path):
    """gloo on the CPU: DDP keeps a tiny IResNet in step with CoReFace's views before its FC and gathered UNPG."""
    out = tmp_path / "ddp"
    launch_two_processes(
        "finetune/train.py",
        "--config",
        str(IRESNET_CONFIGS[1]),
        *TINY,
        *BACKBONES["iresnet50"],
        f"output_dir={out}",
        "max_steps=3",
        "optim.batch_size=4",
        "dump_rank_weights=true",
        "regularisers.coreface.phase2_epoch=0",
        "regularisers.coreface.weight.start_epoch=0",
        "regularisers.unpg.enabled=true",
        "regularisers.unpg.gather=true",
    )
    hashes = [(out / f"weights_rank{rank}.sha256").read_text() for rank in range(2)]
    assert hashes[0] == hashes[1]
    log = [r for r in read_log(out) if "loss" in r]
    assert [r["step"] for r in log] == [1, 2, 3] and log[0]["coreface_loss"] > 0 and "unpg_loss" in log[0]


def test_cpu_recipe_needs_only_the_data_and_an_output_folder(tmp_path):
    """configs/cpu/finetune.yaml from an aligned folder: decoded once, trained, an encoder tools.evaluate reads."""
    root, _ = write_face_folder(tmp_path / "faces", identities=3, per_identity=4)
    config = ["--config", str(ROOT / "configs/cpu/finetune.yaml")]
    out = run(tmp_path / "run", f"data.path={root}", "optim.batch_size=4", "max_steps=2", config=config)
    encoder = load_encoder(out / "encoder")
    assert encoder.pretrained_cfg["input_size"][-1] == 64
    assert encoder(torch.zeros(2, 3, 64, 64)).shape == (2, 512)


def test_cpu_pretrained_recipe_fine_tunes_a_cpu_pretraining_run(tmp_path):
    """configs/cpu/finetune_pretrained.yaml with init= a configs/cpu/pretrain.yaml run (MediaPipe landmarks, computed
    once by pretraining beside the data and found again here)."""
    from lafs.pretrain import main as pretrain

    root, _ = write_face_folder(tmp_path / "faces", identities=3, per_identity=4)
    small = ["dino.out_dim=64", "dino.hidden_dim=32", "dino.bottleneck_dim=16", "optim.batch_size=4", "max_steps=1"]
    pretrained = tmp_path / "pretrain"
    assert pretrain(["--config", str(ROOT / "configs/cpu/pretrain.yaml"), f"data.path={root}",
                     f"output_dir={pretrained}", *small]) == 0  # fmt: skip
    config = ["--config", str(ROOT / "configs/cpu/finetune_pretrained.yaml")]
    out = run(tmp_path / "run", f"data.path={root}", f"init={pretrained}", "optim.batch_size=4", "max_steps=1",
              config=config)  # fmt: skip
    assert json.loads((out / "encoder" / "config.json").read_text())["landmark_source"] == "mediapipe"
    assert len(list(tmp_path.glob("faces.landmarks-*"))) == 1  # one cache, shared by both stages
