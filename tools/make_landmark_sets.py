"""Derive the committed landmark table from MediaPipe run on a real aligned face.

    python -m tools.make_landmark_sets [--output lafs/landmarks/data/mediapipe_face_mesh.json] [--preview out.png]

The only real face available offline is scikit-image's public-domain astronaut portrait. It is aligned to the ArcFace
112 x 112 template, then re-aligned under small random similarity perturbations and mirrored; MediaPipe's mesh on
every copy, mapped back to the aligned frame, is averaged. The mirrored runs give the left/right permutation (matched
by position, then made consistent with the mesh's own edges), which also makes the template exactly symmetric.
The landmark sets are chosen by symmetric farthest-point sampling over the template, so each set is closed under
the flip and covers the face evenly.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from lafs.landmarks.align import ALIGNED_SIZE, align_face, transform_points, warp_image
from lafs.landmarks.mediapipe import MESH_POINTS, FaceMeshDetector, five_points_from_mesh
from lafs.landmarks.sets import TABLE_PATH, TABLE_VERSION

# Points every set keeps: eye corners, nose tip, mouth corners, lip centres (their mirrors come with them).
SEED_POINTS = (33, 133, 1, 61, 13, 14)
SET_SIZES = {"mediapipe49": 49, "mediapipe196": 196}
# Sampled points must be this far inside the crop so that their 8 x 8 patch is mostly image.
BORDER = 3.0


def perturbation(rng: np.random.Generator) -> np.ndarray:
    """A small random similarity about the crop centre (3 x 3): +-6 degrees, +-6 % scale, +-2 px shift."""
    angle = np.deg2rad(rng.uniform(-6, 6))
    scale = rng.uniform(0.94, 1.06)
    shift = rng.uniform(-2, 2, size=2)
    centre = ALIGNED_SIZE / 2
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    out = np.eye(3)
    out[:2, :2] = rotation
    out[:2, 2] = centre - rotation @ [centre, centre] + shift
    return out


def mirror_x(points: np.ndarray) -> np.ndarray:
    out = points.copy()
    out[..., 0] = ALIGNED_SIZE - out[..., 0]
    return out


def run_mesh(detector: FaceMeshDetector, image: np.ndarray) -> np.ndarray:
    mesh = detector(image)
    if mesh is None:
        raise SystemExit("error: MediaPipe found no face on an aligned astronaut crop")
    return mesh[:MESH_POINTS]


def collect_meshes(n_copies: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Meshes (n, 468, 3) on aligned copies and on their mirrors (ids of mirror partners), plus the aligned face."""
    from skimage.data import astronaut

    photo = astronaut()
    with FaceMeshDetector(refine_landmarks=True) as detector:
        full = detector(photo)
    if full is None:
        raise SystemExit("error: MediaPipe found no face in skimage.data.astronaut()")
    aligned, base = align_face(photo, five_points_from_mesh(full))
    rng = np.random.default_rng(seed)
    direct: list[np.ndarray] = []
    mirrored: list[np.ndarray] = []
    with FaceMeshDetector() as detector:
        for copy in range(n_copies):
            extra = np.eye(3) if copy == 0 else perturbation(rng)
            matrix = (extra @ np.vstack([base, [0, 0, 1]]))[:2]
            crop = warp_image(photo, matrix)
            back = np.linalg.inv(extra)[:2]
            for flip, store in ((False, direct), (True, mirrored)):
                mesh = run_mesh(detector, crop[:, ::-1].copy() if flip else crop)
                xy = mirror_x(mesh[:, :2]) if flip else mesh[:, :2]
                depth = mesh[:, 2] / np.sqrt(abs(np.linalg.det(extra[:2, :2])))
                store.append(np.concatenate([transform_points(xy, back), depth[:, None]], axis=1))
    return np.stack(direct), np.stack(mirrored), aligned


def adjacency(edges: Iterable[tuple[int, int]], n: int) -> np.ndarray:
    out = np.zeros((n, n))
    for a, b in edges:
        out[a, b] = out[b, a] = 1
    return out


def flip_permutation(direct: np.ndarray, mirrored: np.ndarray, tessellation: np.ndarray) -> np.ndarray:
    """Mirror partner of every mesh id: mirrored[i] sits where direct[partner(i)] does.

    Positions alone get about 98 % right; re-solving the assignment with a penalty for neighbours that do not map
    onto neighbours (the mesh is mirror-symmetric up to a few diagonal flips) fixes the rest.
    """
    distance = np.linalg.norm(mirrored[:, None, :2] - direct[None, :, :2], axis=-1)
    cost = distance + distance.T  # the partner relation is symmetric
    partner = linear_sum_assignment(cost)[1]
    degree = tessellation.sum(1)
    for _ in range(20):
        mapping = np.zeros_like(tessellation)
        mapping[np.arange(len(partner)), partner] = 1
        disagreement = degree[:, None] - tessellation @ mapping @ tessellation
        updated = linear_sum_assignment(cost + 2.0 * disagreement)[1]
        if np.array_equal(updated, partner):
            break
        partner = updated
    if not np.array_equal(partner[partner], np.arange(len(partner))):
        raise SystemExit("error: the derived flip permutation is not an involution")
    return partner


def ordered_paths(edges: Iterable[tuple[int, int]]) -> tuple[list[list[int]], bool]:
    """Split an edge set into vertex paths whose consecutive ids are edges; also whether all are closed loops."""
    neighbours: dict[int, set[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    unvisited = set(neighbours)
    paths, closed = [], True
    while unvisited:
        ends = sorted(v for v in unvisited if len(neighbours[v]) == 1)
        start = ends[0] if ends else min(unvisited)
        closed &= not ends
        # A branch of a tree starts at the vertex it hangs from, so every edge stays in some path.
        attached = sorted(neighbours[start] - unvisited)
        path = [*attached[:1], start]
        unvisited.discard(start)
        while True:
            following = sorted(neighbours[path[-1]] & unvisited)
            if not following:
                break
            path.append(following[0])
            unvisited.discard(following[0])
        paths.append(path)
    return paths, closed


def check_contours(partner: np.ndarray, contours: dict[str, frozenset]) -> None:
    """The permutation must swap the eye and brow contours and map lips, oval and nose onto themselves."""

    def mapped(edges: frozenset) -> set[tuple[int, ...]]:
        return {tuple(sorted((int(partner[a]), int(partner[b])))) for a, b in edges}

    def plain(edges: frozenset) -> set[tuple[int, ...]]:
        return {tuple(sorted(e)) for e in edges}

    pairs = [("left_eye", "right_eye"), ("left_eyebrow", "right_eyebrow")]
    pairs += [(name, name) for name in ("lips", "face_oval", "nose")]
    for a, b in pairs:
        if mapped(contours[a]) != plain(contours[b]):
            raise SystemExit(f"error: the flip permutation does not map contour {a} onto {b}")


def symmetric_farthest_points(template: np.ndarray, partner: np.ndarray, size: int) -> list[int]:
    """Greedy farthest-point sampling over mirror orbits {i, partner(i)}, seeded with SEED_POINTS."""
    inside = np.all((template > BORDER) & (template < ALIGNED_SIZE - BORDER), axis=1)
    orbits = sorted({tuple(sorted({i, int(partner[i])})) for i in range(len(partner)) if inside[i]})
    chosen: list[int] = []
    for seed in SEED_POINTS:
        chosen += sorted({seed, int(partner[seed])})
    while len(chosen) < size:
        remaining = size - len(chosen)
        candidates = [o for o in orbits if o[0] not in chosen and len(o) <= remaining]
        if not candidates:
            raise SystemExit(f"error: cannot pick {size} symmetric points inside the crop")
        distances = [
            np.linalg.norm(template[list(o)][:, None] - template[chosen][None], axis=-1).min() for o in candidates
        ]
        chosen += list(candidates[int(np.argmax(distances))])
    return sorted(chosen)


def build_table(n_copies: int, seed: int) -> tuple[dict, np.ndarray]:
    import mediapipe
    from mediapipe.python.solutions import face_mesh_connections as connections

    direct_runs, mirrored_runs, aligned = collect_meshes(n_copies, seed)
    direct, mirrored = direct_runs.mean(0), mirrored_runs.mean(0)
    tessellation = adjacency(connections.FACEMESH_TESSELATION, MESH_POINTS)
    partner = flip_permutation(direct, mirrored, tessellation)
    contour_edges = {
        "face_oval": connections.FACEMESH_FACE_OVAL,
        "lips": connections.FACEMESH_LIPS,
        "left_eye": connections.FACEMESH_LEFT_EYE,
        "right_eye": connections.FACEMESH_RIGHT_EYE,
        "left_eyebrow": connections.FACEMESH_LEFT_EYEBROW,
        "right_eyebrow": connections.FACEMESH_RIGHT_EYEBROW,
        "nose": connections.FACEMESH_NOSE,
    }
    check_contours(partner, contour_edges)

    # mirrored[partner[j]] estimates point j too; average both estimates, then make the template exactly symmetric.
    estimate = 0.5 * (direct + mirrored[partner])
    template = 0.5 * (estimate[:, :2] + mirror_x(estimate[partner, :2]))
    depth = 0.5 * (estimate[:, 2] + estimate[partner, 2])
    spread = np.linalg.norm(np.concatenate([direct_runs, mirrored_runs[:, partner]])[..., :2] - template, axis=-1)

    contours = {}
    for name, edges in contour_edges.items():
        paths, closed = ordered_paths(edges)
        contours[name] = {"closed": closed, "paths": paths}
    sets = {
        name: {"version": 1, "mesh_indices": symmetric_farthest_points(template, partner, size)}
        for name, size in SET_SIZES.items()
    }
    sets["mediapipe468"] = {"version": 1, "mesh_indices": list(range(MESH_POINTS))}
    table = {
        "format": "lafs-landmark-table",
        "version": TABLE_VERSION,
        "image_size": ALIGNED_SIZE,
        "coordinates": "pixels (x, y) in the ArcFace-aligned 112 x 112 crop; pixel j spans [j, j + 1)",
        "provenance": {
            "detector": f"mediapipe {mediapipe.__version__} solutions.face_mesh, refine_landmarks=False",
            "faces": f"skimage.data.astronaut aligned to the ArcFace template, {n_copies} perturbed copies + mirrors",
            "seed": seed,
            "mean_spread_px": round(float(spread.mean()), 3),
            "tool": "python -m tools.make_landmark_sets",
        },
        "mesh": {
            "template": np.round(template, 4).tolist(),
            "depth": np.round(depth, 4).tolist(),
            "flip_permutation": partner.tolist(),
        },
        "contours": contours,
        "sets": sets,
    }
    return table, aligned


def save_preview(path: Path, aligned: np.ndarray, table: dict) -> None:
    import cv2

    scale = 4
    canvas = cv2.resize(aligned, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    template = np.asarray(table["mesh"]["template"])
    for name, colour in (("mediapipe196", (255, 255, 0)), ("mediapipe49", (255, 0, 0))):
        for x, y in template[table["sets"][name]["mesh_indices"]] * scale:
            cv2.circle(canvas, (round(x), round(y)), 3 if name == "mediapipe49" else 2, colour, -1, cv2.LINE_AA)
    cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=TABLE_PATH, help="where to write the JSON table")
    parser.add_argument("--copies", type=int, default=16, help="perturbed aligned copies to average")
    parser.add_argument("--seed", type=int, default=0, help="seed for the perturbations")
    parser.add_argument("--preview", type=Path, help="also draw the sets on the aligned face (PNG)")
    args = parser.parse_args(argv)
    table, aligned = build_table(args.copies, args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(table, separators=(",", ":")) + "\n")
    if args.preview:
        save_preview(args.preview, aligned, table)
    fixed = sum(i == p for i, p in enumerate(table["mesh"]["flip_permutation"]))
    print(
        f"wrote {args.output}: {MESH_POINTS} mesh points ({fixed} on the midline), "
        f"mean spread {table['provenance']['mean_spread_px']} px over {2 * args.copies} runs"
    )
    for name, spec in table["sets"].items():
        print(f"  {name}: {len(spec['mesh_indices'])} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
