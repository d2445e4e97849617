"""The landmarks an evaluated encoder is given on an evaluation set, from the source its `LandmarkChoice` names.

- the model places its own (a learned predictor, an images-only ONNX graph): none;
- ``template``: the landmark set's template for every image;
- ``mediapipe``: MediaPipe on each image as it is embedded (the aligned face), computed once per set in worker
  processes and cached beside the set (`lafs.landmarks.set_cache`); images where MediaPipe finds no face get the
  template, and are counted.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from lafs.data.pairs import BinImages
from lafs.landmarks.extract import ImageSource
from lafs.landmarks.provenance import MEDIAPIPE, TEMPLATE, LandmarkChoice
from lafs.landmarks.set_cache import set_landmarks


@dataclass
class EvalLandmarks:
    """Landmarks of a set's images and how they were obtained."""

    points: np.ndarray | None  # (N, K, 2) float32 pixels; None when the model places its own
    record: dict[str, Any]  # for the report: source and, for MediaPipe, the cache file, images and faces missed

    def describe(self, name: str) -> str:
        """One line for a command's output about set ``name``'s landmarks."""
        record = self.record
        if record["source"] != MEDIAPIPE:
            return f"{name}: {record['source']} landmarks"
        how = "computed" if record["computed"] else "read"
        where = record["cache"] or "not cached"
        return (
            f"{name}: MediaPipe landmarks of {record['images']} images {how} ({where}); "
            f"{record['no_face']} without a face got the template"
        )


def landmarks_for_set(
    choice: LandmarkChoice,
    set_file: str | os.PathLike[str],
    images: ImageSource,
    num_images: int,
    workers: int = 1,
    fallback_dir: str | os.PathLike[str] | None = None,
) -> EvalLandmarks:
    """The landmarks ``choice`` gives the ``num_images`` images of the set stored in ``set_file``.

    ``images`` yields the images as they are embedded (`lafs.landmarks.extract.ImageSource`), for MediaPipe, run by
    ``workers`` processes and cached beside ``set_file`` (else in ``fallback_dir``, `lafs.landmarks.set_cache`).
    """
    if not choice.takes_landmarks:
        return EvalLandmarks(None, {"source": choice.source})
    if choice.source == TEMPLATE:  # the encoder's own template (a Part fViT's is its patch grid): it places it
        return EvalLandmarks(None, {"source": TEMPLATE})
    template = choice.template()
    if choice.source != MEDIAPIPE:
        raise ValueError(f"no landmarks to compute for source {choice.source!r}")
    assert choice.landmark_set is not None  # template() above checked it
    cached = set_landmarks(set_file, images, num_images, choice.landmark_set, workers, fallback_dir)
    record = {
        "source": MEDIAPIPE,
        "cache": None if cached.path is None else str(cached.path),
        "computed": cached.computed,
        "images": num_images,
        "no_face": cached.missed,
    }
    return EvalLandmarks(cached.pixels(choice.image_size, template), record)


def bin_landmarks(
    choice: LandmarkChoice,
    bin_path: str | os.PathLike[str],
    num_images: int,
    workers: int = 1,
    fallback_dir: str | os.PathLike[str] | None = None,
) -> EvalLandmarks:
    """`landmarks_for_set` of a ``.bin`` pair set (`lafs.data.pairs.load_bin` order), cached as
    ``<name>.bin.landmarks-<set>.npz`` beside it."""
    images = functools.partial(BinImages, os.fspath(bin_path))
    return landmarks_for_set(choice, bin_path, images, num_images, workers, fallback_dir)
