"""Opening an encoder for inference together with the landmarks it is to be given.

`open_encoder` reads which source the encoder was trained with (config.json's ``landmark_source``,
`lafs.landmarks.provenance`), uses it unless told otherwise (``auto``), warns when told otherwise, and returns the
model in the form that source needs:

- ``predictor``: ``model(images)``; the learned predictor inside the model places the landmarks;
- ``template`` and ``mediapipe``: ``model(images, landmarks)`` with landmarks (B, K, 2) in pixels that the consumer
  computes (the template, or MediaPipe on each aligned face);
- an images-only ONNX file computes its landmarks inside its graph: ``model(images)``, whatever it was exported with.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lafs.errors import DataError
from lafs.export.onnx import INPUT_LANDMARKS, ONNX_FILES, OnnxEncoder
from lafs.export.weights import (
    EXPORT_FORMAT,
    encoder_folder,
    load_encoder_and_predictor,
    predictor_folder,
    recorded_landmark_source,
)
from lafs.files import read_json
from lafs.landmarks.provenance import (
    AUTO,
    DEFAULT_IMAGE_SIZE,
    HOW,
    PREDICTOR,
    TEMPLATE,
    UNRECORDED,
    LandmarkChoice,
    check_landmark_choice,
    choose_landmark_source,
)
from lafs.models import takes_landmarks
from lafs.models.image_encoder import ImageEncoder


def _wanted(requested: str, recorded: str) -> str:
    return recorded if requested == AUTO else requested


def open_encoder(path: str | os.PathLike[str], landmarks: str = AUTO) -> tuple[torch.nn.Module, LandmarkChoice]:
    """The encoder at ``path`` (a run directory, an exported encoder folder or an .onnx file) and its landmarks.

    ``landmarks`` is ``auto`` (what the encoder was trained with), ``template``, ``mediapipe`` or ``predictor``; a
    choice that differs from training warns, one the model cannot take is a one-line error.
    """
    check_landmark_choice(landmarks)  # before loading anything
    path = Path(path)
    if path.suffix == ".onnx":
        return _open_onnx(path, landmarks)
    try:
        folder = encoder_folder(path)
    except DataError:
        raise DataError(f"{path}: not a run directory, an exported encoder folder or an .onnx file") from None
    encoder, predictor = load_encoder_and_predictor(path)
    recorded, explicitly = recorded_landmark_source(folder)
    if predictor is None and _wanted(landmarks, recorded) == PREDICTOR:
        why = "--landmarks predictor" if landmarks == PREDICTOR else "config.json records landmark_source predictor"
        raise DataError(f"{path}: has no landmark predictor ({why})")
    source = choose_landmark_source(recorded, landmarks, str(path))
    model: torch.nn.Module = ImageEncoder(encoder, predictor) if source == PREDICTOR else encoder
    size = int(encoder.pretrained_cfg["input_size"][-1])
    if not takes_landmarks(encoder):  # an IResNet or timm: encoder reads images only, whatever it was trained with
        return encoder, LandmarkChoice(TEMPLATE, recorded, explicitly, False, None, size)
    choice = LandmarkChoice(source, recorded, explicitly, source != PREDICTOR, encoder.landmark_set, size)
    return model, choice


def _onnx_config(path: Path) -> dict[str, Any] | None:
    """config.json of the encoder folder an .onnx file lies in, or None when it lies elsewhere."""
    try:
        config = read_json(path.parent / "config.json")
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and config.get("format") == EXPORT_FORMAT else None


def _graph_landmarks(path: Path, config: dict[str, Any] | None) -> str:
    """What an images-only file computes inside: its config.json entry, else (older exports) predictor when the
    folder holds one, else the template."""
    for entry in ((config or {}).get("onnx") or {}).get("files") or []:
        if isinstance(entry, dict) and entry.get("file") == path.name and entry.get("landmarks") in HOW:
            return str(entry["landmarks"])
    return PREDICTOR if config is not None and predictor_folder(path.parent) is not None else TEMPLATE


def _open_onnx(path: Path, landmarks: str) -> tuple[torch.nn.Module, LandmarkChoice]:
    encoder = OnnxEncoder(path)
    config = _onnx_config(path)
    recorded, explicitly = recorded_landmark_source(path.parent) if config is not None else (UNRECORDED, False)
    landmark_set = config.get("landmark_set") if config is not None else None
    size = int((config or {}).get("input_size", [DEFAULT_IMAGE_SIZE])[-1])
    if not encoder.needs_landmarks:
        inside = _graph_landmarks(path, config)
        if landmarks not in (AUTO, inside):
            raise DataError(
                f"{path}: computes its landmarks inside the graph ({inside}); --landmarks {landmarks} needs "
                f"{ONNX_FILES[False]}, which takes them as input"
            )
        source = choose_landmark_source(recorded, inside, str(path))
        return encoder, LandmarkChoice(source, recorded, explicitly, False, landmark_set, size)
    if config is None:
        raise DataError(f"{path}: takes landmarks, but no config.json of its encoder lies beside it to name their set")
    if _wanted(landmarks, recorded) == PREDICTOR:
        raise DataError(
            f"{path}: takes landmarks as {INPUT_LANDMARKS} and holds no landmark predictor; for the encoder's "
            f"predictor use {ONNX_FILES[True]}, or pass --landmarks template|mediapipe"
        )
    source = choose_landmark_source(recorded, landmarks, str(path))
    return encoder, LandmarkChoice(source, recorded, explicitly, True, landmark_set, size)
