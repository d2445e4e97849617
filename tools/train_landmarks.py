"""Train the learned landmark predictor by distillation from a landmark cache (the MediaPipe teacher).

    python -m tools.train_landmarks data.path=DATA data.landmarks=CACHE [key=value ...]
    python -m tools.train_landmarks --config FILE.yaml [key=value ...]
    python -m tools.train_landmarks data.path=synthetic [key=value ...]     (built-in faces with exact landmarks)
    accelerate launch -m tools.train_landmarks ...                           (several GPUs or processes)

DATA is a .rec, an image folder or a path,label list file of aligned faces; CACHE is its landmark cache from
``python -m tools.landmarks`` (faces MediaPipe missed are skipped: data.missing_landmarks=skip). The predictor learns
data.landmark_set at data.image_size (set there only). A seeded share of the identities (held_out_fraction) is held
out: no identity is in both parts. Training: AdamW, linear warm-up then cosine LR, smooth-L1 (or L1) in pixels over
valid landmarks, random flip (landmark ids swapped with the set's flip permutation) and a small random rotation /
scale / shift applied to image and points by one affine map. The device is accelerate's (a GPU when there is one).

As in pretraining, ``output_dir`` is the run directory, ``max_steps`` stops early (the schedule still spans all
epochs) and ``resume`` (``auto``: the newest checkpoint there; a path; or empty) continues a run exactly. It ends up
holding config.yaml, checkpoints/, log.jsonl, tensorboard/, predictor/ (model.safetensors + config.json, load it
with `lafs.models.landmark_predictor.load_landmark_predictor`) and report.json: the held-out mean pixel error
(Euclidean distance per landmark) and NME (by the inter-ocular distance, outer eye corners), next to the same errors
of the plain template as a reference line. The task is `lafs.tasks.landmarks.LandmarkTask`; the loop `lafs.engine.fit`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from lafs.cli import entry_point
from lafs.config import parse_cli
from lafs.engine import fit
from lafs.tasks.landmarks import LandmarkTask, TrainLandmarksConfig


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_cli(argv, TrainLandmarksConfig, description=__doc__.split("\n\n")[0])
    summary = fit(cfg, LandmarkTask(cfg))
    if "report" in summary.exported:  # the main process wrote it
        report = json.loads(summary.exported["report"].read_text())
        held = report["held_out"]
        print(
            f"landmark predictor -> {report['predictor']}: held-out mean error {held['mean_pixel_error']:.2f} px "
            f"(template {held['template_mean_pixel_error']:.2f} px), NME {held['nme_interocular']:.4f} "
            f"(template {held['template_nme_interocular']:.4f}) on {held['images']} images of "
            f"{report['held_out_identities']} identities; {summary.steps} steps in {summary.seconds:.0f} s on "
            f"{report['train']['device']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
