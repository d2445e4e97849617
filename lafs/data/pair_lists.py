"""Verification pair lists as users have them: our text format, CSV exports and LFW's own ``pairs.txt``.

Accepted, one pair per line (relative paths resolve against the list file's folder):

- ``path_a path_b 1|0``: whitespace separated, ``#`` starts a comment, blank lines skipped (1 = same person).
- CSV (a ``.csv`` file, or any file whose first pair line holds a comma): ``path_a,path_b,label`` with an optional
  header row (``image_a,image_b,same``); labels ``1``/``0``/``true``/``false``/``same``/``different``.
- LFW's ``pairs.txt`` (and ``pairsDevTest.txt``): an optional first line of counts (``10 300`` or ``300``), then
  ``name n1 n2`` (same person) and ``name1 n1 name2 n2`` (different), naming ``<name>/<name>_<nnnn>.jpg``, so the
  list is read from LFW's image folder (or given with ``tools.align --input LFW_FOLDER``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lafs.errors import DataError

LABELS = {"1": True, "0": False, "true": True, "false": False, "same": True, "different": False}
FORMATS = "'path_a path_b 1|0', 'path_a,path_b,label' (CSV) or LFW's 'name n1 n2' / 'name1 n1 name2 n2'"


def _lfw_image(name: str, number: str) -> str:
    return f"{name}/{name}_{int(number):04d}.jpg"


def _rows(path: Path, text: str) -> tuple[list[tuple[int, list[str]]], bool]:
    """(line number, fields) of every pair line, and whether the list is CSV: blank lines dropped; in the whitespace
    formats ``#`` starts a comment, in CSV (split by the csv module) it may be part of a file name."""
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]
    first = next((line for _, line in lines if line and not line.startswith("#")), "")
    if path.suffix.lower() == ".csv" or "," in first:
        rows = [(n, [field.strip() for field in next(csv.reader([line]))]) for n, line in lines if line]
        return [(n, fields) for n, fields in rows if not fields[0].startswith("#")], True
    return [(n, line.split("#", 1)[0].split()) for n, line in lines if line.split("#", 1)[0].strip()], False


def _is_header(fields: list[str]) -> bool:
    """A CSV header row (``image_a,image_b,same``): three fields, no file suffix on the two names (image files have
    one), and no 0/1 label."""
    return len(fields) == 3 and fields[2] not in ("0", "1") and not any(Path(f).suffix for f in fields[:2])


def _pair(path: Path, number: int, fields: list[str]) -> tuple[str, str, bool]:
    """One pair's two relative-or-absolute paths and label, from the fields of any accepted format."""
    if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():  # LFW: name n1 n2
        return _lfw_image(fields[0], fields[1]), _lfw_image(fields[0], fields[2]), True
    if len(fields) == 4 and fields[1].isdigit() and fields[3].isdigit():  # LFW: name1 n1 name2 n2
        return _lfw_image(fields[0], fields[1]), _lfw_image(fields[2], fields[3]), False
    if len(fields) != 3:
        raise DataError(f"{path}:{number}: expected {FORMATS}, got {len(fields)} fields")
    label = LABELS.get(fields[2].lower())
    if label is None:
        raise DataError(f"{path}:{number}: label must be 1/true/same or 0/false/different, got {fields[2]!r}")
    return fields[0], fields[1], label


def parse_pair_list(path: Path) -> list[tuple[int, Path, Path, bool]]:
    """``(line number, path_a, path_b, same)`` of every pair of a list in any accepted format (module docstring).

    Raises `DataError` naming ``file:line`` for a malformed line, or the file when it holds no pair.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheet CSV exports often start with a BOM
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read: {' '.join(str(error).split())}") from None
    rows, is_csv = _rows(path, text)
    if rows and all(field.isdigit() for field in rows[0][1]) and len(rows[0][1]) <= 2:
        rows = rows[1:]  # LFW's counts line: folds and pairs per class
    elif rows and is_csv and _is_header(rows[0][1]):
        rows = rows[1:]
    pairs = []
    for number, fields in rows:
        first, second, same = _pair(path, number, fields)
        pairs.append((number, path.parent / first, path.parent / second, same))
    if not pairs:
        raise DataError(f"{path}: no pairs")
    return pairs


def read_pairs_file(path: str | os.PathLike[str]) -> list[tuple[Path, Path, bool]]:
    """Pairs ``(path_a, path_b, same)`` of a pair list in any accepted format (module docstring); relative paths
    resolved against the list's folder. Raises `DataError` naming ``file:line`` for a malformed line."""
    return [(a, b, same) for _, a, b, same in parse_pair_list(Path(path))]
