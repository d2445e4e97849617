"""Aligning folders of face photos to ArcFace 112 x 112 crops with MediaPipe, written as a dataset.

The pipeline behind ``tools/align.py``: find the photos (`find_photos`: identity sub-folders, a flat folder or a
path,label list file; `pair_photos`: the photos of a pairs file), align them in one or several worker processes
(`align_files`, one MediaPipe detector per process, `lafs.photos.align_photo` per photo), count what failed and why
(`Tally`), and write an image folder (`write_folder`), an insightface ``.rec`` (`write_rec`) or a ``.bin`` pair set
(`write_pairs`), each with a report of the photos that did not align (`report_path`). Outputs appear whole or not at
all; if no photo aligns nothing is written (`DataError`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lafs.data.folder import IMAGE_SUFFIXES, read_list_file, scan_image_folder
from lafs.data.images import encode_jpeg
from lafs.data.open import LIST_SUFFIXES
from lafs.data.pair_lists import read_pairs_file
from lafs.data.pairs import write_bin
from lafs.data.recordio import write_face_rec
from lafs.errors import ConfigError, DataError
from lafs.files import output_folder, write_atomic
from lafs.landmarks.mediapipe import FaceMeshDetector
from lafs.photos import NO_FACE, PHOTO_MAX_FACES, UNREADABLE, align_photo_file
from lafs.progress import progress_bar

OUTPUT_FORMATS = ("folder", "rec", "bin")

_worker: dict[str, Any] = {}  # this process's detector: MediaPipe cannot batch or share one across processes


def _start_worker() -> None:
    _worker["detector"] = FaceMeshDetector(refine_landmarks=True, max_num_faces=PHOTO_MAX_FACES)


def _align_file(path: Path) -> tuple[np.ndarray | None, str]:
    """(crop, "") or (None, reason) for one photo, with this process's detector."""
    return align_photo_file(_worker["detector"], path)


def align_files(paths: Sequence[Path], workers: int = 1) -> Iterator[tuple[np.ndarray | None, str]]:
    """(crop or None, failure reason) for every photo, in order; with ``workers`` > 1 in that many processes."""
    if workers > 1:
        # MediaPipe's threads do not survive fork(): workers come from a clean forkserver, never from this process.
        context = multiprocessing.get_context("forkserver")
        # Preload what workers import (lafs pulls in torch: seconds). Never the command's own module: a worker runs it
        # afresh as its main module, which must not find it imported already.
        context.set_forkserver_preload([__name__])
        with context.Pool(workers, initializer=_start_worker) as pool:
            yield from pool.imap(_align_file, paths, chunksize=4)
    else:
        _start_worker()
        try:
            yield from map(_align_file, paths)
        finally:
            _worker.pop("detector").close()


@dataclass
class Photos:
    """Photos to align, their labels (N,) and the output sub-folder of each label ("" for a flat folder)."""

    paths: list[Path]
    labels: np.ndarray
    folders: dict[int, str]


def find_photos(source: Path) -> Photos:
    """The photos of an identity folder, a flat folder or a path,label list file (sorted by label)."""
    if source.is_dir():
        loose = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        try:
            paths, labels, names = scan_image_folder(source)
        except DataError:
            if not loose:
                raise DataError(
                    f"{source}: no photos (expected {source}/<identity>/<photo> or {source}/<photo>)"
                ) from None
            return Photos(loose, np.zeros(len(loose), dtype=np.int64), {0: ""})
        if loose:
            raise DataError(
                f"{source}: has identity sub-folders and also loose photos ({loose[0].name}); "
                "move the loose ones into a sub-folder"
            )
        return Photos(paths, labels, dict(enumerate(names)))
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    if source.suffix.lower() not in LIST_SUFFIXES:
        raise DataError(f"{source}: not a folder of photos or a path,label list file ({', '.join(LIST_SUFFIXES)})")
    paths, labels = read_list_file(source)
    order = np.argsort(labels, kind="stable")  # a .rec keeps each identity's images together
    width = len(str(labels.max()))  # zero-padded: sorted folder names keep the labels' order
    return Photos([paths[i] for i in order], labels[order], {int(c): str(c).zfill(width) for c in np.unique(labels)})


def _locate(path: Path, pairs_dir: Path, root: Path) -> Path:
    """``path`` as the pairs file resolved it if it exists, else the same relative path under ``root``."""
    if not path.exists():
        with contextlib.suppress(ValueError):  # an absolute path outside pairs_dir stays as it is
            candidate = root / path.relative_to(pairs_dir)
            if candidate.exists():
                return candidate
    return path  # a missing photo is reported as unreadable under this name


def pair_photos(pairs_file: Path, root: Path) -> tuple[Photos, list[tuple[int, int, bool]]]:
    """The distinct photos named in a pairs file and each pair as (photo index, photo index, same)."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (the photos of a pairs file are looked up in a folder)")
    index: dict[Path, int] = {}
    pairs = []
    for a, b, same in read_pairs_file(pairs_file):
        first, second = (index.setdefault(_locate(p, pairs_file.parent, root), len(index)) for p in (a, b))
        pairs.append((first, second, same))
    return Photos(list(index), np.zeros(len(index), dtype=np.int64), {0: ""}), pairs


@dataclass
class Tally:
    """What happened to the photos of one run."""

    photos: int
    aligned: int = 0
    failures: list[tuple[Path, str]] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(reason.startswith(kind) for _, reason in self.failures)

    def require_some(self, source: Path) -> None:
        """DataError when no photo aligned: then nothing may be written."""
        if not self.aligned:
            raise DataError(
                f"{source}: none of the {self.photos} photos aligned ({self.count(NO_FACE)} without a face, "
                f"{self.count(UNREADABLE)} unreadable, e.g. {self.failures[0][0]}: {self.failures[0][1]}); "
                "nothing written"
            )


def aligned_crops(photos: Photos, tally: Tally, workers: int) -> Iterator[tuple[int, np.ndarray]]:
    """(photo index, crop) of every photo that aligns; the others go to ``tally.failures``."""
    results = align_files(photos.paths, workers)
    for index, (crop, reason) in enumerate(progress_bar(results, total=len(photos.paths), desc="align", unit="photo")):
        if crop is None:
            tally.failures.append((photos.paths[index], reason))
        else:
            tally.aligned += 1
            yield index, crop


def output_names(photos: Photos) -> list[Path]:
    """``<identity>/<stem>.png`` for every photo, numbered ``<stem>_2.png``, ... where two stems would meet."""
    taken: set[Path] = set()
    names = []
    for path, label in zip(photos.paths, photos.labels.tolist(), strict=True):
        folder, number = Path(photos.folders[label]), 2
        name = folder / f"{path.stem}.png"
        while name in taken:
            name, number = folder / f"{path.stem}_{number}.png", number + 1
        taken.add(name)
        names.append(name)
    return names


def write_report(path: Path, tally: Tally) -> None:
    """One ``photo<TAB>reason`` line per photo that did not align, written under a temporary name first."""
    lines = [f"# aligned {tally.aligned} of {tally.photos} photos; the photos below were not\n"]
    lines += [f"{photo}\t{reason}\n" for photo, reason in tally.failures]
    write_atomic(path, "".join(lines))


ALIGNED_FOLDER_KIND = "lafs-aligned-folder"  # the manifest kind of a --format folder output


def write_folder(
    output: Path, photos: Photos, tally: Tally, source: Path, workers: int, overwrite: bool = False
) -> None:
    """Write the crops as PNGs under ``output`` and the report beside them, all at once at the end.

    ``output`` is an output folder (`lafs.files.output_folder`): only the files written are replaced, and crops a
    previous run recorded that this one does not write are removed; nothing else there is touched.
    """
    names = output_names(photos)
    with output_folder(output, ALIGNED_FOLDER_KIND, overwrite, inputs=[source]) as staging:
        for index, crop in aligned_crops(photos, tally, workers):
            target = staging / names[index]
            target.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(target), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)):
                raise DataError(f"{output}: cannot write {names[index]}")
        tally.require_some(source)
        write_report(staging / "report.txt", tally)


def write_rec(output: Path, photos: Photos, tally: Tally, source: Path, workers: int, quality: int, bgr: bool) -> int:
    """Write the .rec (+ .idx); returns the number of identities."""

    def items() -> Iterator[tuple[bytes, int]]:
        for index, crop in aligned_crops(photos, tally, workers):
            yield encode_jpeg(crop, quality, bgr), int(photos.labels[index])
        tally.require_some(source)  # raised inside write_face_rec, which then deletes its partial files

    output.parent.mkdir(parents=True, exist_ok=True)
    # num_classes: an identity whose photos all failed keeps its (empty) place, so labels match the input's.
    identities = write_face_rec(output, items(), num_classes=int(photos.labels.max()) + 1)[1]
    write_report(report_path(output, "rec"), tally)
    return identities


def write_pairs(
    output: Path,
    photos: Photos,
    pairs: list[tuple[int, int, bool]],
    tally: Tally,
    source: Path,
    workers: int,
    quality: int,
) -> int:
    """Write the .bin of the pairs whose two photos aligned; returns how many pairs that is."""
    crops = dict(aligned_crops(photos, tally, workers))
    tally.require_some(source)
    kept = [(a, b, same) for a, b, same in pairs if a in crops and b in crops]
    if not kept:
        raise DataError(f"{source}: every pair has a photo that did not align; nothing written")
    write_bin(output, [(crops[a], crops[b]) for a, b, _ in kept], [same for *_, same in kept], quality=quality)
    write_report(report_path(output, "bin"), tally)
    return len(kept)


def report_path(output: Path, fmt: str) -> Path:
    """Where the report goes: inside an output folder, else beside the file as ``<stem>_report.txt``."""
    return output / "report.txt" if fmt == "folder" else output.with_name(f"{output.stem}_report.txt")


def output_targets(output: Path, fmt: str) -> list[Path]:
    """Every path a run writing ``output`` in format ``fmt`` creates (to refuse overwriting them).

    A .rec or .bin output whose name does not end in its suffix is a `ConfigError`.
    """
    if fmt == "folder":
        return [output]
    suffix = f".{fmt}"
    if output.suffix != suffix:
        raise ConfigError(f"an output in format {fmt} must end in {suffix}, got {output}")
    extra = [output.with_suffix(".idx")] if fmt == "rec" else []
    return [output, *extra, report_path(output, fmt)]
