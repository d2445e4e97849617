"""ONNX encoders: export with a dynamic batch axis, a parity check against PyTorch, and onnxruntime inference.

`save_encoder_onnx` writes the weights folder (`lafs.export.weights`) plus, for a landmark-token ViT, two files, both
with a dynamic batch axis:

    folder/model.onnx              images (batch, 3, 112, 112) normalised + landmarks (batch, K, 2) pixels -> embedding
    folder/model_images_only.onnx  images -> embedding, landmarks computed inside: the learned predictor of a
                                   fine-tuned LAFS model, else the template (faces aligned to ArcFace's)

and for an image-only encoder (IResNet, ``timm:``) one, ``folder/model.onnx``: images -> embedding.

and config.json gains an ``"onnx"`` entry listing them with the parity and latency measured at export, and the
landmarks each file uses (``"landmarks"``: ``input``, ``predictor`` or ``template``).

A graph cannot contain MediaPipe, so an encoder trained on MediaPipe landmarks gets no images-only file by default:
``model.onnx`` takes the MediaPipe landmarks the caller computes, and an images-only file on the template would depart
from training without anyone noticing (most on profile faces). Asking for the template explicitly writes it anyway,
recorded as such. `OnnxEncoder` runs either file with onnxruntime as a torch module; `load_any_encoder` opens
whatever a command is given: an ``.onnx`` file, a run directory or an encoder folder.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lafs.errors import DataError
from lafs.export.weights import (
    ENCODER_FILES,
    EXPORT_FORMAT,
    PREDICTOR_FOLDER,
    default_landmark_source,
    encoder_folder,
    load_encoder_and_predictor,
    write_encoder,
)
from lafs.files import output_folder, temporary_name, write_atomic
from lafs.landmarks.provenance import AUTO, MEDIAPIPE, PREDICTOR, choose_landmark_source
from lafs.models import Encoder, LandmarkViT, takes_landmarks
from lafs.models.image_encoder import ImageEncoder
from lafs.models.landmark_predictor import LandmarkPredictor

ONNX_OPSET = 17  # GridSample needs opset 16 or newer
ONNX_FILES = {False: "model.onnx", True: "model_images_only.onnx"}  # a landmark-token ViT's, keyed by images_only
MIN_PARITY_COSINE = 0.9999
INPUT_LANDMARKS = "input"  # config.json: a file whose landmarks are an input (model.onnx)


def load_any_encoder(path: str | os.PathLike[str]) -> torch.nn.Module:
    """An encoder from a run directory (its ``encoder/``), an exported encoder folder, or an ONNX file.

    The result maps normalised images (batch, 3, 112, 112) to embeddings (batch, dim).
    """
    path = Path(path)
    if path.suffix == ".onnx":
        return load_onnx_encoder(path)
    try:
        encoder_folder(path)
    except DataError:
        raise DataError(f"{path}: not a run directory, an exported encoder folder or an .onnx file") from None
    encoder, predictor = load_encoder_and_predictor(path)
    return encoder if predictor is None else ImageEncoder(encoder, predictor)


def load_onnx_encoder(path: str | os.PathLike[str]) -> OnnxEncoder:
    """An ONNX encoder file as a torch module (`OnnxEncoder`); a missing or unreadable file is a `DataError`."""
    return OnnxEncoder(path)


def onnx_files(model: Encoder) -> dict[bool, str]:
    """The ONNX files `save_encoder_onnx` writes for ``model``, keyed by images_only: both forms for a ViT, one
    ``model.onnx`` (images only) for an encoder that reads images only."""
    return ONNX_FILES if takes_landmarks(model) else {True: ONNX_FILES[False]}


def export_onnx(
    model: Encoder,
    path: str | os.PathLike[str],
    images_only: bool,
    opset: int = ONNX_OPSET,
    landmark_predictor: LandmarkPredictor | None = None,
) -> Path:
    """Write ``model`` as ONNX to ``path`` (whole or not at all) and return the path.

    Inputs ``images`` (batch, 3, H, W) float32 normalised and, unless ``images_only``, ``landmarks`` (batch, K, 2)
    float32 pixels; output ``embedding`` (batch, dim). The batch axis is dynamic for every input and the output.
    An images-only graph of a landmark-token ViT computes the landmarks inside: with ``landmark_predictor`` (a
    fine-tuned LAFS model), else the template. An image-only encoder's graph is always images only.
    """
    import onnx  # optional dependencies: only exporting needs them

    if opset < 16:
        raise ValueError(f"opset {opset} has no GridSample; use 16 or newer")
    path = Path(path)
    height, width = model.pretrained_cfg["input_size"][1:]
    images = torch.zeros(2, 3, height, width)
    was_training = model.training
    model.eval()
    module: torch.nn.Module
    args: tuple[torch.Tensor, ...]
    if not isinstance(model, LandmarkViT):
        module, args, names = model, (images,), ["images"]
    elif images_only:
        module, args, names = ImageEncoder(model, landmark_predictor).eval(), (images,), ["images"]
    else:
        module, args, names = model, (images, model.default_landmarks(2).clone()), ["images", "landmarks"]
    dynamic_axes = {name: {0: "batch"} for name in [*names, "embedding"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)  # not mkstemp: its 0600 mode would survive the rename
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(
                module,
                args,
                temporary,
                input_names=names,
                output_names=["embedding"],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        onnx.checker.check_model(str(temporary), full_check=True)
        os.replace(temporary, path)
    finally:
        model.train(was_training)
        temporary.unlink(missing_ok=True)
    return path


def _median_ms_per_image(run: Any, batch: int, repeats: int = 5, warmup: int = 2) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0 / batch


def check_onnx_parity(
    model: Encoder | ImageEncoder,
    onnx_path: str | os.PathLike[str],
    images: torch.Tensor,
    landmarks: torch.Tensor | None = None,
    latency_batch: int = 8,
) -> dict[str, Any]:
    """Compare the ONNX file with ``model`` on ``images`` (batch, 3, H, W) normalised (real faces, not noise).

    ``model`` is the encoder, or the `ImageEncoder` an images-only file was exported from. ``landmarks`` (batch, K,
    2) feed a file with a ``landmarks`` input (the encoder's template if not given); an images-only file is compared
    with ``model(images)``. Returns the smallest per-sample cosine similarity, the largest absolute difference, and
    the median latency per image (ms) of a batch of ``latency_batch`` for PyTorch and ONNX Runtime (CPU). Cosine
    below `MIN_PARITY_COSINE` is a `DataError`.
    """
    encoder = OnnxEncoder(onnx_path)
    images = images.detach().float().cpu()
    if encoder.needs_landmarks and landmarks is None:
        encoder_model = model.encoder if isinstance(model, ImageEncoder) else model
        if not isinstance(encoder_model, LandmarkViT):
            raise DataError(f"{onnx_path}: takes landmarks, but the model it is compared with reads images only")
        landmarks = encoder_model.default_landmarks(images.shape[0]).cpu()
    if not encoder.needs_landmarks:
        landmarks = None
    elif landmarks is not None:
        landmarks = landmarks.detach().float().cpu()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(images, landmarks)
            actual = encoder(images, landmarks)
            cosine = torch.nn.functional.cosine_similarity(expected, actual, dim=1)
            max_abs = (expected - actual).abs().max().item()
            repeat = -(-latency_batch // images.shape[0])
            batch_images = images.repeat(repeat, 1, 1, 1)[:latency_batch]
            batch_landmarks = None if landmarks is None else landmarks.repeat(repeat, 1, 1)[:latency_batch]
            torch_ms = _median_ms_per_image(lambda: model(batch_images, batch_landmarks), latency_batch)
            onnx_ms = _median_ms_per_image(lambda: encoder(batch_images, batch_landmarks), latency_batch)
    finally:
        model.train(was_training)
    report = {
        "samples": images.shape[0],
        "min_cosine": cosine.min().item(),
        "max_abs_diff": max_abs,
        "latency_batch": latency_batch,
        "pytorch_ms_per_image": torch_ms,
        "onnx_ms_per_image": onnx_ms,
    }
    if not report["min_cosine"] >= MIN_PARITY_COSINE:
        raise DataError(
            f"{onnx_path}: ONNX output differs from PyTorch (min cosine {report['min_cosine']:.6f} "
            f"< {MIN_PARITY_COSINE})"
        )
    return report


def images_only_landmarks(landmark_source: str, requested: str = AUTO, has_predictor: bool = False) -> str | None:
    """The landmarks the images-only graph computes inside, ``predictor`` or ``template``; None: no such file.

    ``requested`` (auto | template | predictor | mediapipe) is checked against what the encoder was trained with,
    ``landmark_source``: auto follows it, and a MediaPipe-trained encoder gets no images-only file unless the template
    is asked for (see the module docstring). A choice that differs from training warns; ``predictor`` needs
    ``has_predictor``.
    """
    chosen = choose_landmark_source(landmark_source, requested)
    if chosen == PREDICTOR and not has_predictor:
        why = "--landmarks predictor" if requested == PREDICTOR else f"it records landmark_source {PREDICTOR}"
        raise DataError(f"the encoder has no {PREDICTOR_FOLDER}/ ({why})")
    return None if chosen == MEDIAPIPE else chosen


def images_only_note(graph: str | None, landmark_source: str) -> str:
    """One line on the images-only file for an encoder trained with ``landmark_source`` (config.json, the tool)."""
    if graph is None:
        return (
            f"{ONNX_FILES[True]} not written: the encoder was trained with MediaPipe landmarks, which an ONNX graph "
            f"cannot compute; {ONNX_FILES[False]} takes them as input (--landmarks template writes the images-only "
            "file on the template, departing from training)"
        )
    departs = "" if graph == landmark_source else f", departing from training ({landmark_source})"
    return f"{ONNX_FILES[True]} computes its landmarks with the {graph}{departs}"


def save_encoder_onnx(
    model: Encoder,
    folder: str | os.PathLike[str],
    images: torch.Tensor,
    landmarks: torch.Tensor | None = None,
    source: dict[str, Any] | None = None,
    opset: int = ONNX_OPSET,
    landmark_predictor: LandmarkPredictor | None = None,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
    landmark_source: str | None = None,
    graph_landmarks: str | None = AUTO,
) -> dict[str, dict[str, Any]]:
    """`save_encoder` plus its ONNX files (`onnx_files`), parity-checked on ``images``/``landmarks``; returns the
    report per file.

    ``landmark_source`` is the source the encoder was trained with, recorded in config.json (None:
    `lafs.export.weights.default_landmark_source`). ``graph_landmarks`` is
    what the images-only file computes inside, as `images_only_landmarks` resolves it (``predictor``, ``template``, or
    None for no images-only file); ``auto`` resolves it here: with a predictor it runs inside the graph, and a
    MediaPipe-trained encoder gets no images-only file. The folder keeps a ``landmark_predictor`` in
    ``landmark_predictor/`` whichever the graph uses. ``folder``, ``overwrite`` and ``inputs`` as for `save_encoder`:
    files it does not write are left alone, and a failed export or parity check leaves the folder as it was.
    """
    landmark_source = landmark_source or default_landmark_source(landmark_predictor)
    graph = graph_landmarks
    if graph == AUTO:
        graph = images_only_landmarks(landmark_source, AUTO, landmark_predictor is not None)
    if graph == PREDICTOR and landmark_predictor is None:
        raise ValueError("graph_landmarks=predictor needs a landmark_predictor")
    graph_predictor = landmark_predictor if graph == PREDICTOR else None
    with output_folder(folder, EXPORT_FORMAT, overwrite, inputs, ENCODER_FILES) as staging:
        write_encoder(model, staging, source, landmark_predictor, landmark_source)
        reports, entries = {}, []
        for images_only, name in onnx_files(model).items():
            landmark_tokens = takes_landmarks(model)
            if images_only and landmark_tokens and graph is None:
                continue
            predictor = graph_predictor if landmark_tokens else None
            export_onnx(model, staging / name, images_only=images_only, opset=opset, landmark_predictor=predictor)
            reference = ImageEncoder(model, predictor) if images_only and landmark_tokens else model
            report = check_onnx_parity(reference, staging / name, images, None if images_only else landmarks)
            reports[name] = report
            inputs_of = ["images"] if images_only else ["images", "landmarks"]
            used = (graph if landmark_tokens else "none") if images_only else INPUT_LANDMARKS
            entry = {"file": name, "inputs": inputs_of, "landmarks": used, "output": "embedding", "parity": report}
            entries.append(entry)
        config_path = staging / "config.json"
        config = json.loads(config_path.read_text())
        note = images_only_note(graph, landmark_source)
        config["onnx"] = {"opset": opset, "dynamic_batch": True, "files": entries, "images_only": note}
        write_atomic(config_path, json.dumps(config, indent=2) + "\n")
    return reports


class OnnxEncoder(torch.nn.Module):
    """An exported ONNX encoder run by onnxruntime (CPU): ``encoder(images[, landmarks]) -> embedding``.

    ``images`` (batch, 3, H, W) normalised; ``landmarks`` (batch, K, 2) pixels are required by a file with a
    ``landmarks`` input (``model.onnx``) and refused by an images-only one. Returns a float32 tensor (batch, dim) on
    the images' device. There are no parameters: it is for inference only.
    """

    def __init__(self, path: str | os.PathLike[str], providers: list[str] | None = None) -> None:
        super().__init__()
        import onnxruntime  # optional dependency: only ONNX inference needs it

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such ONNX file")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable or invalid models
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{self.path}: not a readable ONNX model ({reason})") from None
        self.input_names = [node.name for node in self.session.get_inputs()]
        outputs = self.session.get_outputs()
        if self.input_names not in (["images"], ["images", "landmarks"]) or len(outputs) != 1:
            raise DataError(
                f"{self.path}: not a lafs encoder (inputs {self.input_names}, want images[, landmarks]; "
                f"{len(outputs)} outputs, want 1)"
            )
        self.output_name = outputs[0].name
        self.needs_landmarks = "landmarks" in self.input_names
        dim = outputs[0].shape[-1]
        self.num_features = dim if isinstance(dim, int) else None

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        if self.needs_landmarks and landmarks is None:
            raise ValueError(f"{self.path.name} takes landmarks (batch, K, 2) as the second argument")
        if not self.needs_landmarks and landmarks is not None:
            raise ValueError(f"{self.path.name} is images-only (template landmarks); do not pass landmarks")
        feed = {"images": np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)}
        if landmarks is not None:
            feed["landmarks"] = np.ascontiguousarray(landmarks.detach().cpu().numpy(), dtype=np.float32)
        (embedding,) = self.session.run([self.output_name], feed)
        return torch.from_numpy(embedding).to(images.device)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, inputs={self.input_names}"
