"""Stand-alone weights folders: ``model.safetensors`` + ``config.json``, for encoders and landmark predictors.

    folder/model.safetensors   the encoder's state dict (no head, no training state)
    folder/config.json         timm's hub format (architecture, num_classes, num_features, model_args, pretrained_cfg
                               with input size, mean, std and interpolation) and, beside it, the project's fields:
                               format and version, landmark set and template (landmark-token ViTs), the landmark
                               source it was trained with (``landmark_source``: template, mediapipe or predictor),
                               provenance
    folder/landmark_predictor/ (exported fine-tuned LAFS models) the learned landmark predictor, the same format

Every encoder (landmark-token ViT, IResNet, ``timm:`` wrapper) rebuilds, weights loaded, with no other argument:

    import lafs, timm
    encoder = timm.create_model("local-dir:<folder>", pretrained=True)

and `load_encoder(folder)` gives the same model (with one-line errors). The folder is also a Hugging Face model
repository as it is: ``hf upload <user>/<repo> <folder> . --exclude .lafs-output.json`` (huggingface_hub's CLI, or
``huggingface_hub.upload_folder``), then ``timm.create_model("hf-hub:<user>/<repo>", pretrained=True)`` after
``import lafs``. Folders written before timm's
format (``version`` 1: architecture and model_args at the top, no pretrained_cfg) still load with `load_encoder`.

A training run directory keeps its final encoder in ``encoder/`` and its landmark predictor, if any, beside it in
``landmark_predictor/``; `encoder_folder` turns "a run directory or an encoder folder" into the encoder folder, and
`predictor_folder` finds the predictor that belongs to an encoder folder.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError, safe_open
from timm.models import PretrainedCfg, filter_pretrained_cfg

from lafs.errors import ConfigError, DataError
from lafs.files import WEIGHTS_FILES, output_folder, read_json, read_weights_folder, write_weights
from lafs.landmarks.provenance import PREDICTOR, TEMPLATE, UNRECORDED, check_landmark_source
from lafs.models import TIMM_ARCHITECTURE, Encoder, ImageOnlyEncoder, LandmarkViT, takes_landmarks
from lafs.models.iresnet import LAYERS
from lafs.models.landmark_predictor import LandmarkPredictor, load_landmark_predictor, save_landmark_predictor
from lafs.models.partfvit import SIZES as PARTFVIT_SIZES
from lafs.models.partfvit import PartFViT
from lafs.models.vit import SIZES as VIT_SIZES
from lafs.models.vit import block_dims

EXPORT_FORMAT = "lafs-encoder"
EXPORT_VERSION = 2  # 2: timm's hub format with our fields beside it; 1: our own layout (still read)

SIZES = {**VIT_SIZES, **PARTFVIT_SIZES}  # every registered encoder size, by architecture name
ENCODER_FOLDER = "encoder"  # in a run directory: the final encoder
PREDICTOR_FOLDER = "landmark_predictor"  # beside an encoder: its learned landmarks (fine-tuned LAFS models)

# Shape arguments that identify each registered architecture (a folder whose model_args are exactly another's
# is mislabelled); the timm wrapper is one architecture whatever its backbone.
SHAPES: dict[str, dict[str, Any]] = {
    **SIZES,
    **{name: {"layers": list(layers)} for name, layers in LAYERS.items()},
    TIMM_ARCHITECTURE: {},
}


def encoder_config(
    model: Encoder, source: dict[str, Any] | None = None, landmark_source: str = TEMPLATE
) -> dict[str, Any]:
    """The config.json record for ``model``: timm's hub format, then the project's own fields, among them the source
    of the landmarks it was trained with (template, mediapipe, predictor: `lafs.landmarks.provenance`)."""
    config = {
        "architecture": model.pretrained_cfg["architecture"],
        "num_classes": 0,  # an encoder: the margin head, with the class centres, is not exported
        "num_features": model.num_features,
        "model_args": model_args(model),
        "pretrained_cfg": hub_pretrained_cfg(model),
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "landmark_source": check_landmark_source(landmark_source),
        # The channel order the weights expect; the model converts the RGB it is fed itself (never flip for it).
        "channel_order": model.pretrained_cfg.get("channel_order", "rgb"),
        "source": source or {},
    }
    if isinstance(model, LandmarkViT):
        config |= {
            "landmark_set": model.landmark_set,
            "template": model.template.tolist(),
            "patch_size": model.patch_embed.patch_size[0],
        }
    return config


def model_args(model: Encoder) -> dict[str, Any]:
    """The keyword arguments that, with the architecture name, rebuild ``model``'s shapes (timm's model_args)."""
    if isinstance(model, ImageOnlyEncoder):
        return model.rebuild_args()
    if isinstance(model, PartFViT):  # the released Part fViT has more shape arguments (head and MLP widths)
        return model.model_args()
    return {
        "landmark_set": model.landmark_set,
        "embed_dim": model.embed_dim,
        "depth": len(model.blocks),
        "num_heads": block_dims(model)[0],
        "landmark_fit": model.landmark_fit,
    }


def hub_pretrained_cfg(model: Encoder) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` entry: input size, normalisation, interpolation and the timm traits, without where
    the weights came from (a reloaded model's file and source) and without the ``untrained`` tag it was built with."""
    cfg = filter_pretrained_cfg(model.pretrained_cfg, remove_source=True, remove_null=True)
    # Only PretrainedCfg's own fields: timm rebuilds one from this entry (the released Part fViT's channel_order is
    # recorded beside it, at the top level).
    known = {field.name for field in dataclasses.fields(PretrainedCfg)} - {"architecture", "tag"}
    cfg = {key: list(value) if isinstance(value, tuple) else value for key, value in cfg.items() if key in known}
    if isinstance(model, ImageOnlyEncoder):
        cfg["input_size"] = [cfg["input_size"][0], *model.img_size]  # what the model was built for
    return cfg | {"num_classes": 0}


ENCODER_FILES = (
    *WEIGHTS_FILES,
    "model.onnx",
    "model_images_only.onnx",
    f"{PREDICTOR_FOLDER}/model.safetensors",
    f"{PREDICTOR_FOLDER}/config.json",
)  # what an encoder folder written before manifests may hold (`lafs.files.output_folder`'s ``known``)


def save_encoder(
    model: Encoder,
    folder: str | os.PathLike[str],
    source: dict[str, Any] | None = None,
    landmark_predictor: LandmarkPredictor | None = None,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
    landmark_source: str | None = None,
) -> Path:
    """Write the encoder folder ``folder``: model.safetensors, config.json and, with a ``landmark_predictor`` (a
    fine-tuned LAFS model), ``landmark_predictor/``. config.json records ``landmark_source``, the source the encoder
    was trained with (None: `default_landmark_source`).

    ``folder`` is an output folder of kind ``lafs-encoder`` (`lafs.files.output_folder`): missing, empty or a
    previous encoder folder, any other only with ``overwrite``, never one of ``inputs``; files it does not write are
    left alone, and a failure leaves the folder as it was.
    """
    with output_folder(folder, EXPORT_FORMAT, overwrite, inputs, ENCODER_FILES) as staging:
        write_encoder(model, staging, source, landmark_predictor, landmark_source)
    return Path(folder)


def write_encoder(
    model: Encoder,
    staging: Path,
    source: dict[str, Any] | None = None,
    landmark_predictor: LandmarkPredictor | None = None,
    landmark_source: str | None = None,
) -> None:
    """The files of an encoder folder, into the staging folder ``staging`` of an `output_folder`."""
    landmark_source = landmark_source or default_landmark_source(landmark_predictor)
    write_weights(model, staging, encoder_config(model, source, landmark_source))
    if landmark_predictor is not None:
        save_landmark_predictor(landmark_predictor, staging / PREDICTOR_FOLDER, source)


def default_landmark_source(landmark_predictor: LandmarkPredictor | None) -> str:
    """What an encoder written without saying was trained with: its predictor when it comes with one, else the
    template."""
    return TEMPLATE if landmark_predictor is None else PREDICTOR


def load_encoder(folder: str | os.PathLike[str], **overrides: Any) -> Encoder:
    """Rebuild an exported encoder through timm; a missing or mismatched folder is a one-line `DataError`.

    ``overrides`` are timm keyword arguments that do not change the weights' shapes (``drop_path_rate``).
    """
    config, weights = read_weights_folder(folder, EXPORT_FORMAT, "an exported encoder")
    _check_architecture(folder, config)
    _check_size(folder, config, weights)
    try:
        if config.get("version", 1) >= 2:  # timm's own reader, as users call it
            model = timm.create_model(f"local-dir:{Path(folder)}", pretrained=True, **overrides)
        else:  # version 1: the architecture and its arguments at the top, weights by file
            model = timm.create_model(
                config["architecture"],
                pretrained=True,
                pretrained_cfg_overlay={"file": str(weights)},
                **config["model_args"],
                **overrides,
            )
    except (SafetensorError, OSError) as exc:  # an empty or truncated file, or one that cannot be read
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{weights}: unreadable weights (truncated or not safetensors: {problem})") from None
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{folder}: weights do not fit config.json ({str(exc).splitlines()[0]})") from None
    assert isinstance(model, (LandmarkViT, ImageOnlyEncoder))  # _check_architecture admits only our encoders
    checks: list[tuple[str, Any]] = [("num_features", model.num_features)]
    if takes_landmarks(model):
        checks.append(("landmark_set", model.landmark_set))
    for key, actual in checks:
        if config.get(key, actual) != actual:
            raise DataError(f"{folder}: config.json: {key} {config[key]!r} disagrees with the model's {actual}")
    return model


MAX_SHAPE_VALUE = 65_536  # no shape argument of a face encoder (width, heads, image size) comes near this
MAX_DEPTH = 1_000  # blocks: timm builds each as Python objects, even on the meta device


def _check_size(folder: str | os.PathLike[str], config: dict[str, Any], weights: Path) -> None:
    """`DataError` unless config.json's model_args describe as many weights as the weights file holds, checked on
    timm's meta device (nothing allocated) after bounding every number: a crafted ``depth=100000`` or
    ``embed_dim=1e7`` would otherwise allocate gigabytes before failing, ``num_heads=0`` divide by zero."""
    args = config.get("model_args") or {}
    for key, value in args.items():
        limit = MAX_DEPTH if key in ("depth", "layers") else MAX_SHAPE_VALUE
        numbers = value if isinstance(value, list) else [value]  # IResNet's layers are a list of block counts
        for number in numbers:
            if isinstance(number, (int, float)) and not isinstance(number, bool) and not 0 <= number <= limit:
                raise DataError(f"{folder}: config.json: model_args {key}={value} is out of range [0, {limit}]")
    try:
        with safe_open(str(weights), "pt") as file:
            stored = sum(math.prod(file.get_slice(name).get_shape()) for name in file.keys())  # noqa: SIM118
        with torch.device("meta"):
            model = timm.create_model(config["architecture"], pretrained=False, **args)
    except (SafetensorError, OSError):
        return  # unreadable weights: the loader says so in its own words
    except (NotImplementedError, RuntimeError) as exc:
        if "meta" in str(exc):
            return  # a constructor that computes with tensors cannot build on the meta device: bounds suffice
        raise DataError(f"{folder}: weights do not fit config.json ({str(exc).splitlines()[0]})") from None
    except (ArithmeticError, AssertionError, TypeError, ValueError) as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{folder}: weights do not fit config.json ({problem})") from None
    described = sum(p.numel() for p in model.state_dict().values())
    if described != stored:
        raise DataError(f"{folder}: config.json describes {described:,} weights, {Path(weights).name} holds {stored:,}")


def _check_architecture(folder: str | os.PathLike[str], config: dict[str, Any]) -> None:
    """`DataError` unless config.json names one of our encoders and its model_args do not contradict that name.

    model_args are authoritative (the weights are checked against the model they build); the architecture name is
    checked against them: shape arguments that are exactly another registered size's are a mislabelled encoder,
    which would load and be reported under the wrong name. Shapes of no registered size are a custom size of the
    named family, which timm builds the same way.
    """
    name, args = config.get("architecture"), config.get("model_args")
    if name not in SHAPES:
        known = ", ".join(SHAPES)
        kind = (
            "a timm model, not a lafs encoder"
            if isinstance(name, str) and timm.is_model(name)
            else "not a lafs encoder"
        )
        raise DataError(f"{folder}: config.json: architecture {name!r} is {kind} (known: {known})")
    if not isinstance(args, dict):
        raise DataError(f"{folder}: config.json: model_args must be a mapping of keyword arguments, got {args!r}")
    shape = {key: args.get(key, default) for key, default in SHAPES[name].items()}
    others = [other for other, size in SHAPES.items() if size == shape and size and other != name]
    if others:
        given = ", ".join(f"{key} {value}" for key, value in shape.items())
        raise DataError(
            f"{folder}: config.json: architecture {name} disagrees with model_args ({given}: those of {others[0]})"
        )


def encoder_folder(path: str | os.PathLike[str]) -> Path:
    """The encoder folder of ``path``: a run directory's ``encoder/`` when it has one, else ``path`` itself.

    Neither holding a ``config.json`` is a one-line `DataError`. Only the location is checked; `load_encoder` reads
    the folder.
    """
    path = Path(path)
    inside = path / ENCODER_FOLDER
    folder = inside if (inside / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        raise DataError(f"{path}: not a run directory (with {ENCODER_FOLDER}/config.json) or an encoder folder")
    return folder


def recorded_landmark_source(folder: str | os.PathLike[str]) -> tuple[str, bool]:
    """(landmark source, whether config.json records it) of the encoder folder ``folder``.

    Folders written before the record have no ``landmark_source``: they count as the template (`UNRECORDED`), what
    consumers gave them then, unless a landmark predictor belongs to them (a fine-tuned LAFS model, which consumers
    ran with its predictor). An unknown value is a one-line `DataError`.
    """
    path = Path(folder) / "config.json"
    try:
        config = read_json(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the encoder's record ({exc})") from None
    recorded = config.get("landmark_source") if isinstance(config, dict) else None
    if recorded is None:
        return (UNRECORDED if predictor_folder(folder) is None else PREDICTOR), False
    try:
        return check_landmark_source(recorded, f"{path}: landmark_source"), True
    except ConfigError as error:
        raise DataError(str(error)) from None


def recorded_landmark_set(folder: str | os.PathLike[str]) -> str | None:
    """The landmark set a landmark-token encoder folder's config.json records; None for an image-only encoder or a
    folder that does not read (`load_encoder` reports that one)."""
    try:
        config = read_json(Path(folder) / "config.json")
    except (OSError, ValueError):
        return None
    name = config.get("landmark_set") if isinstance(config, dict) else None
    return name if isinstance(name, str) else None


def predictor_folder(encoder: str | os.PathLike[str]) -> Path | None:
    """The landmark predictor that belongs to the encoder folder ``encoder``, or None.

    An exported folder keeps it inside (``encoder/landmark_predictor``); a run directory keeps it beside its
    ``encoder/`` (``run/landmark_predictor``).
    """
    encoder = Path(encoder)
    for folder in (encoder / PREDICTOR_FOLDER, encoder.parent / PREDICTOR_FOLDER):
        if (folder / "config.json").is_file():
            return folder
    return None


def load_encoder_and_predictor(
    path: str | os.PathLike[str], **overrides: Any
) -> tuple[Encoder, LandmarkPredictor | None]:
    """The encoder of a run directory or an encoder folder (`encoder_folder`), and its landmark predictor or None.

    ``overrides`` as for `load_encoder`. Problems are one-line `DataError` messages.
    """
    folder = encoder_folder(path)
    predictor = predictor_folder(folder)
    return load_encoder(folder, **overrides), None if predictor is None else load_landmark_predictor(predictor)
