"""Which landmark source an encoder was trained with, and which one a consumer gives it.

An encoder samples its tokens at landmarks, so embeddings depend on where those come from:

- ``template``: the landmark set's mean positions on an ArcFace-aligned face (free, never missing);
- ``mediapipe``: MediaPipe's face mesh run on each aligned face (a training set's landmark cache);
- ``predictor``: the learned landmark predictor that a fine-tuned LAFS model carries beside its encoder.

An encoder folder records its source in config.json (``landmark_source``); every consumer uses it by default
(``auto``) and warns when told to use another, since embeddings then depart from what the encoder was trained on.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from lafs.errors import ConfigError, DataError
from lafs.landmarks.cache import LandmarkCache
from lafs.landmarks.sets import get_landmark_set
from lafs.landmarks.sources import scaled_template

TEMPLATE, MEDIAPIPE, PREDICTOR = "template", "mediapipe", "predictor"
LANDMARK_SOURCES = (TEMPLATE, MEDIAPIPE, PREDICTOR)
AUTO = "auto"  # a consumer's default: the source the encoder recorded
LANDMARK_CHOICES = (AUTO, *LANDMARK_SOURCES)
UNRECORDED = TEMPLATE  # encoder folders written before the record existed were all evaluated with the template
DEFAULT_IMAGE_SIZE = 112  # the ArcFace crop every encoder takes (an ONNX file without its config.json)
HOW = {
    TEMPLATE: "the landmark set's template",
    MEDIAPIPE: "MediaPipe on each aligned face",
    PREDICTOR: "the encoder's learned landmark predictor",
}
logger = logging.getLogger("lafs.landmarks")


def check_landmark_source(source: str, where: str = "landmark_source") -> str:
    """``source`` if it names a landmark source, else a one-line `ConfigError` naming ``where`` it came from."""
    if source not in LANDMARK_SOURCES:
        raise ConfigError(f"{where}: unknown landmark source {source!r} (choose from {', '.join(LANDMARK_SOURCES)})")
    return source


def data_landmark_source(landmarks: str) -> str:
    """The source of a training set's landmarks given ``data.landmarks``: the template, or what its cache recorded.

    (Synthetic faces, whose exact landmarks come with ``data.landmarks=template``, count as the template: nothing
    outside the renderer can give those landmarks to a deployed encoder.)
    """
    if landmarks in ("", TEMPLATE):
        return TEMPLATE
    if landmarks == "none":
        raise ConfigError("data.landmarks=none: the training data has no landmark source")
    return check_landmark_source(LandmarkCache.open(landmarks).info.landmark_source, f"{landmarks}/meta.json")


def default_workers() -> int:
    """Processes for MediaPipe: the cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS)
        return os.cpu_count() or 1


def add_landmark_options(parser: argparse.ArgumentParser, workers: bool = True) -> None:
    """``--landmarks auto|template|mediapipe|predictor`` (default auto: what the encoder was trained with) and, with
    ``workers``, ``--workers N``: processes that run MediaPipe over an evaluation set."""
    parser.add_argument(
        "--landmarks",
        choices=LANDMARK_CHOICES,
        default=AUTO,
        help="landmarks to give the encoder (default auto: the source it was trained with; another one warns)",
    )
    if workers:
        parser.add_argument(
            "--workers",
            type=int,
            default=default_workers(),
            metavar="N",
            help="processes running MediaPipe for --landmarks mediapipe (default: every core)",
        )


def check_landmark_choice(requested: str) -> str:
    """``requested`` if it is a ``--landmarks`` choice (auto or a source), else a one-line `ConfigError`."""
    if requested not in LANDMARK_CHOICES:
        raise ConfigError(f"--landmarks: unknown choice {requested!r} (choose from {', '.join(LANDMARK_CHOICES)})")
    return requested


def choose_landmark_source(recorded: str, requested: str = AUTO, encoder: str = "the encoder") -> str:
    """The source to use: ``recorded`` for ``auto``, else ``requested``, with a warning when the two differ."""
    if check_landmark_choice(requested) == AUTO:
        return recorded
    if requested != recorded:
        logger.warning(
            f"warning: landmarks: using {requested}, but {encoder} was trained with {recorded} landmarks; "
            "its embeddings depart from training"
        )
    return requested


@dataclass(frozen=True)
class LandmarkChoice:
    """The landmarks a consumer gives an encoder, and what the encoder was trained with."""

    source: str  # template | mediapipe | predictor: what the consumer uses
    recorded: str  # what the encoder was trained with (`recorded_landmark_source`)
    recorded_explicitly: bool  # False: a folder written before the record (or an ONNX file without its folder)
    takes_landmarks: bool  # the model is called model(images, landmarks (B, K, 2) pixels); else model(images)
    landmark_set: str | None  # None only for an images-only ONNX file without its config.json
    image_size: int = DEFAULT_IMAGE_SIZE

    def describe(self) -> str:
        """One line saying which landmarks are used and what the encoder was trained with."""
        trained = self.recorded if self.recorded_explicitly else f"{self.recorded} (not recorded; assumed)"
        return f"landmarks: {self.source} ({HOW[self.source]}); the encoder was trained with {trained}"

    def record(self) -> dict[str, Any]:
        """Report fields: ``landmark_source`` used, ``trained_with`` and ``trained_with_recorded`` (False: assumed)."""
        return {
            "landmark_source": self.source,
            "trained_with": self.recorded,
            "trained_with_recorded": self.recorded_explicitly,
        }

    def template(self) -> np.ndarray:
        """The landmark set's template (K, 2) in pixels of the encoder's input."""
        if self.landmark_set is None:
            raise DataError("the encoder's landmark set is unknown (an ONNX file without its config.json)")
        return scaled_template(self.landmark_set, self.image_size, self.image_size)

    def flip_permutation(self) -> np.ndarray:
        """(K,) landmark ids after a horizontal flip (`lafs.landmarks.sets.LandmarkSet.flip_permutation`)."""
        if self.landmark_set is None:
            raise DataError("the encoder's landmark set is unknown (an ONNX file without its config.json)")
        return get_landmark_set(self.landmark_set).flip_permutation
