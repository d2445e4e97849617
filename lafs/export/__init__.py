"""Exporting encoders: weights folders (`lafs.export.weights`) and ONNX (`lafs.export.onnx`)."""

from lafs.export.onnx import (
    MIN_PARITY_COSINE,
    ONNX_FILES,
    ONNX_OPSET,
    OnnxEncoder,
    check_onnx_parity,
    export_onnx,
    load_any_encoder,
    load_onnx_encoder,
    onnx_files,
    save_encoder_onnx,
)
from lafs.export.weights import (
    ENCODER_FOLDER,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    PREDICTOR_FOLDER,
    encoder_config,
    encoder_folder,
    load_encoder,
    load_encoder_and_predictor,
    predictor_folder,
    save_encoder,
)

__all__ = [
    "ENCODER_FOLDER",
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "MIN_PARITY_COSINE",
    "ONNX_FILES",
    "ONNX_OPSET",
    "PREDICTOR_FOLDER",
    "OnnxEncoder",
    "check_onnx_parity",
    "encoder_config",
    "encoder_folder",
    "export_onnx",
    "load_any_encoder",
    "load_encoder",
    "load_encoder_and_predictor",
    "load_onnx_encoder",
    "onnx_files",
    "predictor_folder",
    "save_encoder",
    "save_encoder_onnx",
]
