"""Importing the released LAFS checkpoints (szlbiubiubiu/LAFS_CVPR2024) as encoder folders.

A released checkpoint becomes a normal encoder folder (`lafs.export.save_encoder`): the Part fViT
(`lafs.models.partfvit.PartFViT`) in ``model.safetensors`` + ``config.json``, its landmark network
(`lafs.models.released_mobilenet.ReleasedLandmarkNet`) in ``landmark_predictor/``, and the supervised models'
CosFace classifier (``loss.weight``) in ``margin_head.safetensors`` (`load_released_head`).

Layouts read (`split_layout`), all with ``torch.load(weights_only=True)`` allowing only ``argparse.Namespace``:

- **state dict** ``{name: tensor}``: a supervised Part fViT as ``train_largescale.py`` saves it, with DDP's
  ``module.`` prefix when saved from the wrapper.
- **self-supervised** ``{"teacher", "student", "optimizer", "epoch", "args", "dino_loss", ...}`` (``lafs_train.py``):
  the teacher is imported, as the released fine-tuning does; its ``backbone.`` tensors are the ViT, its ``head.``
  tensors the DINO projection head (pretraining only, not imported). These ViTs have no landmark network: the
  released fine-tuning takes it from a supervised checkpoint, ``landmark_network=`` here.
- **model** ``{"model": {"encoder.<name>": ...}}`` (SimMIM-style): ``encoder.`` stripped as the released code does,
  the ``decoder.`` tensors set aside; a ``model`` dict without prefixes is read as a state dict.

Every tensor of the model is accounted for: mapped (`released_destination`) and loaded strictly, shapes checked,
or set aside by name with the reason (DINO head, SimMIM decoder); anything else is a one-line `DataError` naming it.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lafs.errors import DataError
from lafs.export.weights import ENCODER_FILES, EXPORT_FORMAT, write_encoder
from lafs.files import follow_umask, output_folder
from lafs.models.partfvit import HEAD_DIM, PartFViT
from lafs.models.released_mobilenet import ReleasedLandmarkNet

ARCHITECTURE = "lafs_partfvit_b_p8_112"
LANDMARK_SET = "mediapipe196"  # the registered 196-point set: only its count matters to the released model
TOKENS, PATCH = 196, 8  # the released model: 196 tokens of 8 x 8 pixels
HEAD_FILE = "margin_head.safetensors"  # the released CosFace class centres, as `finetune.heads.MarginHead` names them
RELEASED_HEAD = {"name": "cosface", "scale": 64.0, "margins": [1.0, 0.0, 0.4]}  # ViT_face.py CosFace(s=64, m=0.4)

# Released name -> ours, outside the blocks.
_TOP = {
    "cls_token": "cls_token",
    "pos_embedding": "pos_embed",
    "patch_to_embedding.weight": "patch_embed.proj.weight",
    "patch_to_embedding.bias": "patch_embed.proj.bias",
    "mlp_head.0.weight": "norm.weight",
    "mlp_head.0.bias": "norm.bias",
}
# Inside block i: released ``transformer.layers.<i>.<suffix>`` -> ours ``blocks.<i>.<name>``.
_BLOCK = {
    "0.fn.norm.weight": "norm1.weight",
    "0.fn.norm.bias": "norm1.bias",
    "0.fn.fn.to_qkv.weight": "attn.qkv.weight",
    "0.fn.fn.to_out.0.weight": "attn.proj.weight",
    "0.fn.fn.to_out.0.bias": "attn.proj.bias",
    "1.fn.norm.weight": "norm2.weight",
    "1.fn.norm.bias": "norm2.bias",
    "1.fn.fn.net.0.weight": "mlp.fc1.weight",
    "1.fn.fn.net.0.bias": "mlp.fc1.bias",
    "1.fn.fn.net.3.weight": "mlp.fc2.weight",
    "1.fn.fn.net.3.bias": "mlp.fc2.bias",
}
_BLOCK_KEY = re.compile(r"transformer\.layers\.(\d+)\.(.+)")
_PRETRAINING_ONLY = {"mask_token": "the SimMIM mask token (pretraining only)"}


@dataclass
class ReleasedWeights:
    """A released model's tensors sorted by destination (names are ours), and what was set aside and why."""

    encoder: dict[str, torch.Tensor] = field(default_factory=dict)
    landmark_network: dict[str, torch.Tensor] = field(default_factory=dict)  # released names = ours
    classifier: torch.Tensor | None = None  # loss.weight (classes, dim) of a supervised model
    set_aside: dict[str, str] = field(default_factory=dict)  # group of tensors -> why it is not imported


@dataclass
class ImportSummary:
    """What `import_released_checkpoint` read and wrote."""

    layout: str
    architecture: str
    model_args: dict[str, Any]
    encoder_tensors: int
    landmark_network: str  # where the landmark network came from, or "" when there is none
    classifier: tuple[int, ...] | None
    set_aside: dict[str, str]
    folder: Path


def read_released_checkpoint(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` allowing ``argparse.Namespace`` (the self-supervised ``args``).

    An unreadable file, or one that needs anything else to unpickle (code could run), is a one-line `DataError`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        unsafe = re.search(r"GLOBAL ([\w.]+)", text)
        if unsafe:
            raise DataError(
                f"{path}: refused: unpickling it needs {unsafe.group(1)}, and only tensors, containers and "
                "argparse.Namespace are allowed"
            ) from None
        found = [line.strip() for line in text.splitlines() if line.strip().startswith("Unsupported")]
        raise DataError(f"{path}: not a readable torch checkpoint ({(found or ['unpickling failed'])[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable torch checkpoint ({str(exc).strip().splitlines()[0]})") from None


def _tensors(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``state`` without ``prefix`` when every key carries it (DDP's ``module.``), else unchanged."""
    if all(key.startswith(prefix) for key in state):
        return {key[len(prefix) :]: value for key, value in state.items()}
    return dict(state)


def _count(keys: list[str]) -> str:
    return f"{len(keys)} tensor{'s' if len(keys) != 1 else ''}"


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        keys = [str(key) for key in list(value)[:6]]
        more = ", ..." if len(value) > 6 else ""
        return f"a dict of {len(value)} entries ({', '.join(keys)}{more})"
    return f"a {type(value).__name__}"


def split_layout(checkpoint: Any, path: str | os.PathLike[str]) -> tuple[str, dict[str, torch.Tensor], dict[str, str]]:
    """(layout, the model's tensors under released names, set-aside groups -> reason) of a loaded checkpoint."""
    aside: dict[str, str] = {}
    if isinstance(checkpoint, Mapping) and _tensors(checkpoint.get("teacher")):
        teacher = _strip(checkpoint["teacher"], "module.")
        unknown = [key for key in teacher if not key.startswith(("backbone.", "head."))]
        if unknown:
            raise DataError(f"{path}: teacher tensors outside backbone. and head.: {', '.join(unknown[:4])}")
        heads = [key for key in teacher if key.startswith("head.")]
        if heads:
            aside["head.*"] = f"{_count(heads)}: the DINO projection head (pretraining only)"
        others = sorted(str(key) for key in checkpoint if key != "teacher")
        if others:
            aside["(entries)"] = f"{', '.join(others)}: training state, not read (the teacher is imported)"
        model = {key[len("backbone.") :]: value for key, value in teacher.items() if key.startswith("backbone.")}
        return "self-supervised checkpoint (teacher)", model, aside
    if isinstance(checkpoint, Mapping) and _tensors(checkpoint.get("model")):
        state = _strip(checkpoint["model"], "module.")
        decoder = [key for key in state if key.startswith("decoder.")]
        if decoder:
            aside["decoder.*"] = f"{_count(decoder)}: the SimMIM decoder (pretraining only)"
        model = _strip({key: value for key, value in state.items() if key not in decoder}, "encoder.")
        return "{'model': ...} checkpoint", model, aside
    if _tensors(checkpoint):
        ddp = all(key.startswith("module.") for key in checkpoint)
        return ("DDP state dict (module.)" if ddp else "state dict"), _strip(checkpoint, "module."), aside
    raise DataError(
        f"{path}: unknown checkpoint layout: {_describe(checkpoint)}; expected a state dict, "
        "a dict with 'teacher' (self-supervised) or a dict with 'model'"
    )


def released_destination(key: str) -> tuple[str, str] | None:
    """(part, our name) of a released model tensor: part is encoder, landmark_network or classifier; else None."""
    if key in _TOP:
        return "encoder", _TOP[key]
    block = _BLOCK_KEY.fullmatch(key)
    if block and block.group(2) in _BLOCK:
        return "encoder", f"blocks.{block.group(1)}.{_BLOCK[block.group(2)]}"
    if key.startswith(("stn.", "output_layer.")):
        return "landmark_network", key
    if key == "loss.weight":
        return "classifier", "weight"
    return None


def sort_released(model: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> ReleasedWeights:
    """The tensors of a released model by destination; one it does not know is a one-line `DataError`."""
    weights = ReleasedWeights()
    unknown = []
    for key, value in model.items():
        place = released_destination(key)
        if place is None:
            if key in _PRETRAINING_ONLY:
                weights.set_aside[key] = _PRETRAINING_ONLY[key]
            else:
                unknown.append(key)
        elif place[0] == "encoder":
            weights.encoder[place[1]] = value
        elif place[0] == "landmark_network":
            weights.landmark_network[place[1]] = value
        else:
            weights.classifier = value
    if unknown:
        more = f" and {len(unknown) - 4} more" if len(unknown) > 4 else ""
        raise DataError(f"{path}: tensors that are not part of a released Part fViT: {', '.join(unknown[:4])}{more}")
    return weights


def infer_model_args(encoder: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> dict[str, Any]:
    """`PartFViT` shape arguments read off the tensors' shapes (the head width is the released 64)."""
    needed = ("pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight")
    missing = [name for name in needed if name not in encoder]
    if missing:
        released = {value: key for key, value in _TOP.items()}
        names = [released.get(name, name) for name in missing]
        raise DataError(f"{path}: not a Part fViT checkpoint: no {', '.join(names)}")
    slots, dim = encoder["pos_embed"].shape[1:]
    pixels = encoder["patch_embed.proj.weight"].shape[1]
    if (slots, pixels) != (1 + TOKENS, 3 * PATCH * PATCH):
        raise DataError(
            f"{path}: pos_embedding has {slots} rows and patch_to_embedding takes {pixels} numbers per token: not the "
            f"released Part fViT (1 + {TOKENS} rows, {PATCH} x {PATCH} RGB patches), the only model this imports"
        )
    inner = encoder["blocks.0.attn.qkv.weight"].shape[0] // 3
    if inner % HEAD_DIM:
        raise DataError(f"{path}: attention of {inner} inner dims is not a whole number of {HEAD_DIM}-wide heads")
    depth = 1 + max(int(name.split(".")[1]) for name in encoder if name.startswith("blocks."))
    return {
        "landmark_set": LANDMARK_SET,
        "embed_dim": int(dim),
        "depth": depth,
        "num_heads": inner // HEAD_DIM,
        "head_dim": HEAD_DIM,
        "mlp_dim": int(encoder["blocks.0.mlp.fc1.weight"].shape[0]),
    }


def build_released_encoder(weights: ReleasedWeights, path: str | os.PathLike[str]) -> PartFViT:
    """The Part fViT holding ``weights.encoder``, loaded strictly (every tensor used, every shape checked)."""
    model = cast(PartFViT, timm.create_model(ARCHITECTURE, **infer_model_args(weights.encoder, path)))
    try:
        model.load_state_dict(weights.encoder)
    except RuntimeError as exc:
        raise DataError(f"{path}: the ViT tensors do not fit a Part fViT ({_first_problem(exc)})") from None
    return model.eval()


def build_landmark_network(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> ReleasedLandmarkNet:
    """The released landmark network holding ``tensors`` (``stn.*``, ``output_layer.*``), loaded strictly."""
    network = ReleasedLandmarkNet(LANDMARK_SET)
    try:
        network.load_state_dict(tensors)
    except RuntimeError as exc:
        problem = _first_problem(exc)
        raise DataError(f"{path}: the landmark network does not fit MobileNetV3-large ({problem})") from None
    return network.eval()


def _first_problem(exc: RuntimeError) -> str:
    """The first specific line of a load_state_dict error (missing, unexpected or mis-shaped tensors)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else lines[0]


def read_released(path: str | os.PathLike[str]) -> tuple[str, ReleasedWeights]:
    """(layout, tensors by destination) of a released checkpoint file."""
    layout, model, aside = split_layout(read_released_checkpoint(path), path)
    weights = sort_released(model, path)
    weights.set_aside.update(aside)
    if weights.classifier is not None and layout.startswith("self-supervised"):
        # The self-supervised ViTs were built with a CosFace head that never saw a label: nothing to start from.
        weights.set_aside["loss.weight"] = "the classifier a self-supervised run built but never trained"
        weights.classifier = None
    return layout, weights


def import_released_checkpoint(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    landmark_network: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> ImportSummary:
    """Write the encoder folder ``output`` from a released checkpoint; returns what was read and written.

    ``landmark_network``: another released checkpoint whose ``stn.*`` / ``output_layer.*`` tensors give the landmark
    network (the released fine-tuning's ``--pretrain_path``); it replaces any the first one holds. ``output`` is an
    output folder of kind ``lafs-encoder`` (`lafs.files.output_folder`), never one holding an input.
    """
    layout, weights = read_released(checkpoint)
    encoder = build_released_encoder(weights, checkpoint)
    network_source = str(checkpoint) if weights.landmark_network else ""
    network_tensors = weights.landmark_network
    if landmark_network is not None:
        network_tensors = read_released(landmark_network)[1].landmark_network
        if not network_tensors:
            raise DataError(f"{landmark_network}: holds no landmark network (stn.*, output_layer.*)")
        network_source = str(landmark_network)
    network = build_landmark_network(network_tensors, network_source) if network_tensors else None
    classifier = weights.classifier
    if classifier is not None and (classifier.ndim != 2 or classifier.shape[1] != encoder.num_features):
        raise DataError(f"{checkpoint}: loss.weight {tuple(classifier.shape)} is not (classes, {encoder.num_features})")
    source: dict[str, Any] = {
        "imported_from": str(Path(checkpoint).resolve()),
        "layout": layout,
        "landmark_network_from": str(Path(network_source).resolve()) if network_source else None,
        "not_imported": weights.set_aside,
    }
    if classifier is not None:
        source["margin_head"] = {"file": HEAD_FILE, "num_classes": classifier.shape[0], **RELEASED_HEAD}
    inputs = [checkpoint, *([landmark_network] if landmark_network is not None else [])]
    with output_folder(output, EXPORT_FORMAT, overwrite, inputs, ENCODER_FILES) as staging:
        write_encoder(encoder, staging, source, network)
        if classifier is not None:
            save_file({"weight": classifier.contiguous()}, str(staging / HEAD_FILE), metadata={"format": "pt"})
            follow_umask(staging / HEAD_FILE)
    return ImportSummary(
        layout=layout,
        architecture=ARCHITECTURE,
        model_args=encoder.model_args(),
        encoder_tensors=len(weights.encoder),
        landmark_network=network_source,
        classifier=None if classifier is None else tuple(classifier.shape),
        set_aside=weights.set_aside,
        folder=Path(output),
    )


def load_released_head(folder: str | os.PathLike[str]) -> torch.Tensor | None:
    """The imported CosFace class centres (classes, dim) of an encoder folder, or None when it has none.

    Named as `finetune.heads.MarginHead` names them: ``head.load_state_dict({"weight": load_released_head(f)})``
    continues the released classifier (same identities, same order) under ``head.name=cosface``.
    """
    path = Path(folder) / HEAD_FILE
    if not path.is_file():
        return None
    try:
        return load_file(str(path))["weight"]
    except (OSError, KeyError, SafetensorError) as exc:
        raise DataError(f"{path}: unreadable margin head ({str(exc).splitlines()[0] if str(exc) else exc!r})") from None
