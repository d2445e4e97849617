"""Stand-alone weights folders: ``model.safetensors`` + ``config.json``, for encoders and landmark predictors.

    folder/model.safetensors   the encoder's state dict (no head, no training state)
    folder/config.json         architecture, the arguments to rebuild it, input size, normalisation, landmark set
                               and template, embedding size, and where the weights came from
    folder/landmark_predictor/ (exported fine-tuned LAFS models) the learned landmark predictor, the same format

`load_encoder(folder)` and ``timm.create_model(architecture, pretrained=True,
pretrained_cfg_overlay={"file": folder/"model.safetensors"}, **model_args)`` (after ``import lafs``) give the same
model.

A training run directory keeps its final encoder in ``encoder/`` and its landmark predictor, if any, beside it in
``landmark_predictor/``; `encoder_folder` turns "a run directory or an encoder folder" into the encoder folder, and
`predictor_folder` finds the predictor that belongs to an encoder folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import timm
from safetensors import SafetensorError

from lafs.errors import DataError
from lafs.files import WEIGHTS_FILES, output_folder, read_weights_folder, write_weights
from lafs.models.landmark_predictor import LandmarkPredictor, load_landmark_predictor, save_landmark_predictor
from lafs.models.partfvit import SIZES as PARTFVIT_SIZES
from lafs.models.partfvit import PartFViT
from lafs.models.vit import SIZES as VIT_SIZES
from lafs.models.vit import LandmarkViT, block_dims

EXPORT_FORMAT = "lafs-encoder"
EXPORT_VERSION = 1

SIZES = {**VIT_SIZES, **PARTFVIT_SIZES}  # every registered encoder size, by architecture name
ENCODER_FOLDER = "encoder"  # in a run directory: the final encoder
PREDICTOR_FOLDER = "landmark_predictor"  # beside an encoder: its learned landmarks (fine-tuned LAFS models)


def encoder_config(model: LandmarkViT, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config.json record for ``model``."""
    cfg = model.pretrained_cfg
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "architecture": cfg["architecture"],
        # The released Part fViT has more shape arguments (head width, MLP width): it lists its own.
        "model_args": model.model_args()
        if isinstance(model, PartFViT)
        else {
            "landmark_set": model.landmark_set,
            "embed_dim": model.embed_dim,
            "depth": len(model.blocks),
            "num_heads": block_dims(model)[0],
        },
        "input_size": list(cfg["input_size"]),
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        # The channel order the weights expect; the model converts the RGB it is fed itself (never flip for it).
        "channel_order": cfg.get("channel_order", "rgb"),
        "landmark_set": model.landmark_set,
        "template": model.template.tolist(),
        "patch_size": model.patch_embed.patch_size[0],
        "num_features": model.num_features,
        "source": source or {},
    }


ENCODER_FILES = (
    *WEIGHTS_FILES,
    "model.onnx",
    "model_images_only.onnx",
    f"{PREDICTOR_FOLDER}/model.safetensors",
    f"{PREDICTOR_FOLDER}/config.json",
)  # what an encoder folder written before manifests may hold (`lafs.files.output_folder`'s ``known``)


def save_encoder(
    model: LandmarkViT,
    folder: str | os.PathLike[str],
    source: dict[str, Any] | None = None,
    landmark_predictor: LandmarkPredictor | None = None,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Write the encoder folder ``folder``: model.safetensors, config.json and, with a ``landmark_predictor`` (a
    fine-tuned LAFS model), ``landmark_predictor/``.

    ``folder`` is an output folder of kind ``lafs-encoder`` (`lafs.files.output_folder`): missing, empty or a
    previous encoder folder, any other only with ``overwrite``, never one of ``inputs``; files it does not write are
    left alone, and a failure leaves the folder as it was.
    """
    with output_folder(folder, EXPORT_FORMAT, overwrite, inputs, ENCODER_FILES) as staging:
        write_encoder(model, staging, source, landmark_predictor)
    return Path(folder)


def write_encoder(
    model: LandmarkViT,
    staging: Path,
    source: dict[str, Any] | None = None,
    landmark_predictor: LandmarkPredictor | None = None,
) -> None:
    """The files of an encoder folder, into the staging folder ``staging`` of an `output_folder`."""
    write_weights(model, staging, encoder_config(model, source))
    if landmark_predictor is not None:
        save_landmark_predictor(landmark_predictor, staging / PREDICTOR_FOLDER, source)


def load_encoder(folder: str | os.PathLike[str], **overrides: Any) -> LandmarkViT:
    """Rebuild an exported encoder through timm; a missing or mismatched folder is a one-line `DataError`.

    ``overrides`` are timm keyword arguments that do not change the weights' shapes (``drop_path_rate``).
    """
    config, weights = read_weights_folder(folder, EXPORT_FORMAT, "an exported encoder")
    _check_architecture(folder, config)
    try:
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
    except (RuntimeError, KeyError, TypeError) as exc:
        raise DataError(f"{folder}: weights do not fit config.json ({str(exc).splitlines()[0]})") from None
    encoder = cast(LandmarkViT, model)  # _check_architecture admits only the registered LandmarkViT sizes
    for key, actual in (("landmark_set", encoder.landmark_set), ("num_features", encoder.num_features)):
        if config.get(key, actual) != actual:
            raise DataError(f"{folder}: config.json: {key} {config[key]!r} disagrees with the model's {actual}")
    return encoder


def _check_architecture(folder: str | os.PathLike[str], config: dict[str, Any]) -> None:
    """`DataError` unless config.json names one of our encoders and its model_args do not contradict that name.

    model_args are authoritative (the weights are checked against the model they build); the architecture name is
    checked against them: shape arguments that are exactly another registered size's are a mislabelled encoder,
    which would load and be reported under the wrong name. Shapes of no registered size are a custom size of the
    named family, which timm builds the same way.
    """
    name, args = config.get("architecture"), config.get("model_args")
    if name not in SIZES:
        known = ", ".join(SIZES)
        kind = (
            "a timm model, not a lafs encoder"
            if isinstance(name, str) and timm.is_model(name)
            else "not a lafs encoder"
        )
        raise DataError(f"{folder}: config.json: architecture {name!r} is {kind} (known: {known})")
    if not isinstance(args, dict):
        raise DataError(f"{folder}: config.json: model_args must be a mapping of keyword arguments, got {args!r}")
    shape = {key: args.get(key, default) for key, default in SIZES[name].items()}
    others = [other for other, size in SIZES.items() if size == shape and other != name]
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
) -> tuple[LandmarkViT, LandmarkPredictor | None]:
    """The encoder of a run directory or an encoder folder (`encoder_folder`), and its landmark predictor or None.

    ``overrides`` as for `load_encoder`. Problems are one-line `DataError` messages.
    """
    folder = encoder_folder(path)
    predictor = predictor_folder(folder)
    return load_encoder(folder, **overrides), None if predictor is None else load_landmark_predictor(predictor)
