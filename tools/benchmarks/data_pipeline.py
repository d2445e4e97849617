"""Data-pipeline figures: what one loader worker does per pretraining image, against bare JPEG decoding.

N synthetic faces are written as JPEG files into a temporary image folder, read back through `open_dataset` with
template landmarks (read + decode + resize + landmarks: everything a worker does when the views are made on the
accelerator, `views.make_on=accelerator`), and through `PretrainViews` (the same plus all 2 + N views made in the
worker by `lafs.views`' one renderer, `views.make_on=loader`). The reference reads the same files and decodes
them with OpenCV, nothing else. Everything runs in this process on one torch thread, as a loader worker does.

With views on the accelerator the worker's code does not know how many views there are, so its CPU time per image
cannot grow with them; ``worker_views_growth`` shows how the worker-made views grow (``--num-local`` vs 2 locals),
and ``device_views_vs_decode`` how fast the device makes a batch's views (on a CPU device that is CPU time too).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from lafs.data.collate import collate_faces
from lafs.data.open import open_dataset
from lafs.views import DeviceViews, LandmarkViews, PretrainViews, ViewConfig
from tools.benchmarks.common import (
    DEFAULT_ENCODER,
    figure,
    resolve_device,
    result,
    time_side_by_side,
    write_jpeg_faces,
)

LANDMARK_SET = "mediapipe196"  # LAFS's set: the most landmarks per view
GROWTH_BASE_LOCALS = 2  # CPU time per image at --num-local is compared with this many local views


def bench_data_pipeline(
    encoder: str = DEFAULT_ENCODER,
    batch: int = 32,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "auto",
    images: int = 128,
    num_local: int = 8,
) -> dict[str, Any]:
    """Worker images/s with views on the accelerator and in the worker vs bare decoding; growth with local views."""
    dev = resolve_device(device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loader worker's share
    try:
        with tempfile.TemporaryDirectory(prefix="lafs-bench-data-") as tmp:
            root = Path(tmp) / "faces"
            paths = sorted(write_jpeg_faces(root, images).rglob("*.jpg"))
            figures, extra = _measure(root, paths, dev, batch, repeats, warmup, num_local)
        return result(
            "data", encoder, batch, repeats, warmup, dev, figures, images=images, num_local=num_local, **extra
        )
    finally:
        torch.set_num_threads(threads)


def _measure(
    root: Path, paths: list[Path], dev: torch.device, batch: int, repeats: int, warmup: int, num_local: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    count = len(paths)
    faces = open_dataset(str(root), landmarks="template", landmark_set=LANDMARK_SET)

    def views_in_worker(locals_: int) -> PretrainViews:
        return PretrainViews(faces, LandmarkViews(ViewConfig(num_local=locals_), LANDMARK_SET))

    def read_all(dataset: Any) -> Any:
        return lambda: [dataset[i] for i in range(count)]

    def decode_all() -> None:
        for path in paths:
            cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)

    faces_s, decode_s = time_side_by_side(read_all(faces), decode_all, repeats, warmup, torch.device("cpu"))
    many, few = views_in_worker(num_local), views_in_worker(GROWTH_BASE_LOCALS)
    repeats_views = max(1, repeats // 3)  # 20 to 40 times slower than decoding: fewer runs keep the figure short
    views_s, decode_again_s = time_side_by_side(read_all(many), decode_all, repeats_views, min(warmup, 1), dev)
    many_s, few_s = time_side_by_side(read_all(many), read_all(few), repeats_views, min(warmup, 1), dev)

    device_views = DeviceViews(ViewConfig(num_local=num_local), LANDMARK_SET)
    face_batch = {k: v.to(dev) for k, v in collate_faces([faces[i] for i in range(min(batch, count))]).items()}
    generator = torch.Generator(dev).manual_seed(0)
    rendered = len(face_batch["image"])
    render_s, decode_batch_s = time_side_by_side(
        lambda: device_views(face_batch, generator), decode_all, repeats, warmup, dev
    )
    figures = [
        figure("worker_vs_decode", count / faces_s, count / decode_s, "images/s", 0.5, higher_is_better=True),
        figure("worker_views_vs_decode", count / views_s, count / decode_again_s, "images/s", None, True),
        figure("worker_views_growth", many_s / count * 1e3, few_s / count * 1e3, "ms/image", None, False),
        figure("device_views_vs_decode", rendered / render_s, count / decode_batch_s, "images/s", None, True),
    ]
    return figures, {"landmark_set": LANDMARK_SET, "growth_base_locals": GROWTH_BASE_LOCALS}
