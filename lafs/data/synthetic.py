"""Procedural synthetic faces with exact landmarks: the embedded default data for demos and tests.

These are cartoon faces drawn with OpenCV, not photographs or renderings of real people. An identity is a seeded,
deterministic deformation of the MediaPipe face-mesh template (face outline, eye spacing and size, nose, mouth, lips,
brows) with its own skin tone, hair, eye and lip colours, hair style, facial hair and skin marks (moles, freckles,
blush). Each image of an identity adds its own 3D pose (orthographic), expression (open mouth, smile, raised brows,
blink, gaze), lighting, background, blur, noise and JPEG. Backgrounds are never tied to an identity, so the label can
only be predicted from the head itself.

The landmarks are exact: they are the very mesh points the face was drawn from, projected by the same transform.
Every landmark is therefore known, also where the pose hides it, and ``landmark_valid`` is all True.

Coordinates are ``(x, y)`` float32 pixels of the returned image, pixel ``j`` spanning ``[j, j + 1)``. Faces are
roughly aligned like ArcFace 112 x 112 crops; another ``image_size`` scales that crop.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
import torch
from numpy.typing import ArrayLike
from torch.utils.data import Dataset

from lafs.data.collate import collate_faces, normalize_images
from lafs.errors import ConfigError
from lafs.landmarks.sets import LandmarkSet, get_face_mesh, get_landmark_set

REFERENCE_SIZE = 112  # the mesh template's crop size: all geometry is built in these pixels, then scaled
_SHIFT = 4  # fractional bits of cv2 drawing coordinates: 1/16 px keeps anti-aliased edges where the mesh says
_TEXTURE_ONE = 200.0  # uint8 value that means "unchanged" in the multiplicative skin texture, leaving room to brighten
_IDENTITY_STREAM, _IMAGE_STREAM = 0, 1  # seed-sequence tags so identity and image seeds can never coincide

# Mesh ids the contours do not name. Left (image-left) members; their mirror partners come from the flip permutation.
_NOSE_RIDGE = (168, 6, 197, 195, 5, 4)
_NOSE_WING = (97, 98, 64, 48)
_NOSTRIL = (79, 20, 242, 99, 60, 238)
_CHEEK, _EAR, _JAW, _BRIDGE = 205, 234, 172, 168


def _rgb(hex_colours: str) -> np.ndarray:
    return np.array([[int(h[i : i + 2], 16) for i in (0, 2, 4)] for h in hex_colours.split()], dtype=np.float64)


# The Monk skin tone scale, light to dark: a realistic, evenly spread range.
_SKIN_TONES = _rgb("f6ede4 f3e7db f7ead0 eadaba d7bd96 a07e56 825c43 604134 3a312a 292420")
# Black, dark brown, brown, light brown, blonde, platinum, auburn, grey, white; weights roughly as common.
_HAIR_COLOURS = _rgb("1c1816 37261c 5f412a 8c6441 c8a569 e1d2aa 873c23 8c8c8a d7d7d2")
_HAIR_WEIGHTS = np.array([3.0, 3.0, 2.0, 1.5, 1.2, 0.4, 0.8, 0.6, 0.3])
_FAIR_HAIR = np.array([4, 5, 6])  # blonde, platinum, auburn: rare with dark skin
# Dark brown, brown, hazel, green, blue, grey; light-skinned weights, then dark-skinned ones.
_IRIS_COLOURS = _rgb("372316 643e23 7d6437 557346 4b73a5 737d87")
_IRIS_WEIGHTS = np.array([3, 3, 2, 1, 1.5, 0.7]), np.array([9, 6, 2, 0.2, 0.15, 0.14])


# The synthetic faces are for demos and tests; a million identities (64 MB of identity parameters) is far beyond
# either, and a billion asked for 64 GB at start-up.
MAX_SYNTHETIC_COUNT = 1_000_000


@dataclass
class SyntheticFacesConfig:
    """What to generate and how much each image of an identity varies; set a knob to 0 to switch its variation off."""

    num_identities: int = 100  # enough classes for a demo verification split, few enough to render in seconds
    images_per_identity: int = 10  # several views per identity, so same-identity pairs exist
    image_size: int = 112  # the ArcFace crop size the encoders take
    landmark_set: str = "mediapipe196"  # the project's default landmark tokens
    seed: int = 0  # another seed gives another, equally valid, data set
    max_yaw: float = 25.0  # degrees: aligned crops in the wild are mostly within this before detectors give up
    max_pitch: float = 15.0  # degrees: up/down head tilt of typical face photos
    max_roll: float = 15.0  # degrees: in-plane rotation left over by imperfect 5-point alignment
    scale_jitter: float = 0.08  # relative face-size error of detector-based alignment
    shift_px: float = 4.0  # translation error of alignment, in pixels of a 112 crop
    expression: float = 1.0  # 0..1 strength of open mouth, smile, raised brows, blink and gaze
    lighting: float = 1.0  # 0..1 strength of light direction, brightness, contrast and colour-temperature jitter
    noise_std: float = 4.0  # largest Gaussian sensor-noise std (0..255 scale); each image draws up to it
    blur_prob: float = 0.2  # share of images with a mild defocus blur, as in upscaled low-resolution crops
    jpeg_prob: float = 0.3  # share of images passed through JPEG (quality 30..90), as web photos are

    def validate(self, prefix: str = "") -> None:
        """Raise `ConfigError` for values no data set can be made from.

        ``prefix``: the dotted key this section sits at (``"data."`` in the demo, ``"synthetic."`` in the training
        stages; `lafs.config.load_config` passes it), so messages name the key the user typed.
        """
        for name in ("num_identities", "images_per_identity"):
            if not 1 <= getattr(self, name) <= MAX_SYNTHETIC_COUNT:
                raise ConfigError(f"{prefix}{name} must lie in [1, {MAX_SYNTHETIC_COUNT}], got {getattr(self, name)}")
        if self.image_size < 32:
            raise ConfigError(f"{prefix}image_size must be at least 32 pixels, got {self.image_size}")
        if self.seed < 0:
            raise ConfigError(f"{prefix}seed must be non-negative, got {self.seed}")
        for name in ("max_yaw", "max_pitch", "max_roll", "scale_jitter", "shift_px", "noise_std"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{prefix}{name} must be non-negative, got {getattr(self, name)}")
        for name in ("max_yaw", "max_pitch", "max_roll"):
            if getattr(self, name) > 60:
                value = getattr(self, name)
                raise ConfigError(f"{prefix}{name} must be at most 60 degrees (a frontal mesh), got {value}")
        if self.scale_jitter >= 0.5:
            raise ConfigError(f"{prefix}scale_jitter must be below 0.5, got {self.scale_jitter}")
        for name in ("expression", "lighting", "blur_prob", "jpeg_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{prefix}{name} must be between 0 and 1, got {getattr(self, name)}")
        get_landmark_set(self.landmark_set)  # raises ConfigError for an unknown name


@dataclass(frozen=True, eq=False)
class FaceIdentity:
    """Everything fixed about one synthetic person; positions are 3D ``(x, y, depth)`` in 112-crop template pixels."""

    seed: int
    points: np.ndarray  # (468, 3) neutral mesh
    skin: np.ndarray  # (3,) RGB colours, 0..255
    hair: np.ndarray
    brow: np.ndarray
    lip: np.ndarray
    iris: np.ndarray
    texture: np.ndarray  # (112, 112, 3) uint8 multiplicative skin detail in template pixels (_TEXTURE_ONE = 1)
    cranium: np.ndarray  # (C, 3) bald skull above the mesh's forehead, or (0, 3) under hair; skin = hull of it + mesh
    hair_back: np.ndarray  # (N, 3) points whose convex hull is the hair behind the head; empty when bald
    hair_front: np.ndarray  # (M, 3) polygon of the hair over the forehead; empty when bald
    strands: np.ndarray  # (S, 2, 3) combing lines in the front hair
    ears: np.ndarray  # (2, E, 3) ear outlines, or (0, E, 3) when hidden by long hair
    neck: np.ndarray  # (4, 3) neck quadrilateral
    beard: float  # share of the jaw-to-mouth distance the beard covers; 0 = none
    moustache: float  # moustache height in pixels; 0 = none
    lash: float  # upper-eyelid line thickness in pixels


@dataclass(frozen=True, eq=False)
class _Parts:
    """Mesh ids of the drawn features, image-left first in pairs, and the neutral (closed, relaxed mouth) template."""

    neutral: np.ndarray  # (468, 3)
    flip: np.ndarray
    skull: np.ndarray  # face-oval arc over the top, from ear level to ear level: where hair grows
    jaw: np.ndarray  # face-oval arc under the mouth: where a beard grows
    eyes: tuple[np.ndarray, np.ndarray]  # closed loops
    upper_lids: tuple[np.ndarray, np.ndarray]  # arcs, corners included, left to right
    lower_lids: tuple[np.ndarray, np.ndarray]  # arcs, corners included, left to right
    brows: tuple[np.ndarray, np.ndarray]  # closed polygons
    brow_tops: np.ndarray  # upper brow lines of both brows
    outer_lips: np.ndarray  # closed loop
    inner_lips: np.ndarray  # closed loop
    upper_lip: np.ndarray  # polygon: outer upper arc, then inner upper arc back
    lower_lip: np.ndarray  # polygon: outer lower arc, then inner lower arc back
    mouth_line: np.ndarray  # inner upper arc, corner to corner
    inner_lower: np.ndarray  # inner lower arc, corner to corner
    outer_upper: np.ndarray  # outer upper arc, corner to corner
    outer_lower: np.ndarray  # outer lower arc, corner to corner
    corners: tuple[int, int]
    nose_wings: tuple[np.ndarray, np.ndarray]
    nostrils: tuple[np.ndarray, np.ndarray]
    cheeks: tuple[int, int]


def _split_loop(loop: tuple[int, ...], xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower arc of a closed loop, each from its leftmost to its rightmost point, corners included."""
    ids = np.asarray(loop)
    left, right = int(np.argmin(xy[ids, 0])), int(np.argmax(xy[ids, 0]))
    rolled = np.roll(ids, -left)
    right = (right - left) % len(ids)
    one, other = rolled[: right + 1], np.append(rolled[right:], rolled[0])[::-1]
    return (one, other) if xy[one, 1].mean() < xy[other, 1].mean() else (other, one)


def _pair(ids: tuple[int, ...] | int, flip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    left = np.atleast_1d(np.asarray(ids))
    return left, flip[left]


@cache
def _parts() -> _Parts:
    mesh = get_face_mesh()
    xy, flip, contours = mesh.template.astype(np.float64), mesh.flip_permutation, mesh.contours
    oval = np.asarray(contours["face_oval"][1][0])
    left = oval[int(np.flatnonzero(oval == _EAR)[0]) + 1 :: -1]  # from one point below the ear up to the top
    skull = np.concatenate([left, flip[left[-2::-1]]])
    jaw = oval[xy[oval, 1] > xy[_CHEEK, 1]]
    jaw = np.roll(jaw, -int(np.argmin(xy[jaw, 0])))
    eyes = sorted((np.asarray(contours[n][1][0]) for n in ("left_eye", "right_eye")), key=lambda e: xy[e, 0].mean())
    lids = [_split_loop(tuple(e), xy) for e in eyes]
    brows = []
    for name in ("right_eyebrow", "left_eyebrow"):  # the subject's right brow is image-left
        a, b = (np.asarray(p) for p in contours[name][1])
        brows.append((a, b) if xy[a, 1].mean() < xy[b, 1].mean() else (b, a))
    loops = sorted(
        (np.asarray(p) for p in contours["lips"][1]), key=lambda p: cv2.contourArea(xy[p].astype(np.float32))
    )
    inner, outer = loops
    outer_up, outer_lo = _split_loop(tuple(outer), xy)
    inner_up, inner_lo = _split_loop(tuple(inner), xy)
    brow_loops = [np.concatenate([top, bottom[::-1]]) for top, bottom in brows]
    parts = _Parts(
        neutral=np.empty(0),
        flip=flip,
        skull=skull,
        jaw=jaw,
        eyes=(eyes[0], eyes[1]),
        upper_lids=(lids[0][0], lids[1][0]),
        lower_lids=(lids[0][1], lids[1][1]),
        brows=(brow_loops[0], brow_loops[1]),
        brow_tops=np.concatenate([top for top, _ in brows]),
        outer_lips=outer,
        inner_lips=inner,
        upper_lip=np.concatenate([outer_up, inner_up[::-1]]),
        lower_lip=np.concatenate([outer_lo, inner_lo[::-1]]),
        mouth_line=inner_up,
        inner_lower=inner_lo,
        outer_upper=outer_up,
        outer_lower=outer_lo,
        corners=(int(outer_up[0]), int(outer_up[-1])),
        nose_wings=_pair(_NOSE_WING, flip),
        nostrils=_pair(_NOSTRIL, flip),
        cheeks=(_CHEEK, int(flip[_CHEEK])),
    )
    points = np.column_stack([xy, mesh.depth.astype(np.float64)])
    object.__setattr__(parts, "neutral", _close_mouth(points, parts))
    return parts


def _close_mouth(points: np.ndarray, parts: _Parts) -> np.ndarray:
    """The template photo smiles with parted lips; identities start from a closed, relaxed mouth."""
    p = points.copy()
    up, lo = parts.mouth_line, parts.inner_lower
    gap = np.interp(p[up, 0], p[lo, 0], p[lo, 1]) - p[up, 1]
    p[up, 1] += 0.35 * gap
    p[:, :2] += _jaw_drop(p[:, :2], parts, -0.65 * gap.max())
    p[lo, 1] = np.interp(p[lo, 0], p[up, 0], p[up, 1])
    p[:, :2] += _smile(p[:, :2], parts, -0.5)
    return p


def _gauss(p: np.ndarray, centre: np.ndarray, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((p[:, 0] - centre[0]) / sx) ** 2 + ((p[:, 1] - centre[1]) / sy) ** 2))


def _jaw_drop(p: np.ndarray, parts: _Parts, amount: float) -> np.ndarray:
    """Move the lower lip, chin and jaw down by ``amount`` px at the chin, fading towards the mouth corners."""
    corner_y = p[list(parts.corners), 1].mean()
    lip_y = p[parts.inner_lower, 1].max()
    ramp = np.clip((p[:, 1] - corner_y) / max(lip_y - corner_y, 1.0), 0, 1)
    centre_x = p[list(parts.corners), 0].mean()
    weight = (
        ramp * ramp * (3 - 2 * ramp) * np.exp(-0.5 * ((p[:, 0] - centre_x) / 30) ** 2)
    )  # smoothstep, jaw sides less
    weight[parts.upper_lip] = 0
    return np.column_stack([np.zeros(len(p)), amount * weight])


def _smile(p: np.ndarray, parts: _Parts, amount: float) -> np.ndarray:
    d = np.zeros_like(p)
    for corner, side in zip(parts.corners, (-1, 1), strict=True):
        d += amount * _gauss(p, p[corner], 6, 6)[:, None] * (1.5 * side, -2.5)
    return d


def _expression(p: np.ndarray, parts: _Parts, open_: float, smile: float, brows: float, blink: float) -> np.ndarray:
    p = p + _jaw_drop(p, parts, 9 * open_) + _smile(p, parts, smile)
    for brow in parts.brows:
        p[:, 1] -= 3 * brows * _gauss(p, p[brow].mean(0), 12, 6)
    for upper, lower in zip(parts.upper_lids, parts.lower_lids, strict=True):
        lid = upper[1:-1]  # the corners stay
        p[lid, 1] += blink * (np.interp(p[lid, 0], p[lower, 0], p[lower, 1]) - p[lid, 1])
    return p


def _identity_shape(rng: np.random.Generator, p: np.ndarray, parts: _Parts) -> np.ndarray:
    """A smooth (468, 2) displacement of face outline, eyes, brows, nose and mouth; made symmetric by the caller."""
    u = rng.uniform
    centre = np.array([56.0, 71.0])
    q = (p - centre) / (40.0, 45.0)
    r2 = np.minimum((q**2).sum(1), 1.3)  # inner features move little, the outline most, as on aligned crops
    angle = np.arctan2(q[:, 1], np.abs(q[:, 0]))  # mirrored angle, so the outline bumps are symmetric
    radial = u(-0.1, 0.1) * np.cos(angle) ** 2 + u(-0.08, 0.08) * np.sin(angle) ** 2
    for at, size in ((math.pi / 2, 0.12), (math.pi / 4, 0.12), (0.0, 0.08), (-math.pi / 4, 0.06)):
        radial = radial + u(-size, size) * np.exp(-0.5 * ((angle - at) / 0.35) ** 2)  # chin, jaw, cheek, temple
    d = (p - centre) * (r2 * radial)[:, None]
    spacing, width, height, tilt, raise_ = u(-2.5, 2.5), u(-0.15, 0.15), u(-0.25, 0.25), u(-0.12, 0.12), u(-2, 2)
    brow_y, arch, brow_tilt = u(-3, 3), u(-1.5, 2), u(-1.5, 1.5)
    for eye, brow, side in zip(parts.eyes, parts.brows, (-1, 1), strict=True):
        c, w = p[eye].mean(0), _gauss(p, p[eye].mean(0), 9, 7)[:, None]
        rot = (p - c) @ np.array([[math.cos(tilt), side * math.sin(tilt)], [-side * math.sin(tilt), math.cos(tilt)]])
        d += w * ((side * spacing, raise_) + (p - c) * (width, height) + rot - (p - c))
        b = p[brow].mean(0)
        wb = _gauss(p, b, 12, 5)
        d[:, 1] += wb * (brow_y - arch * (1 - ((p[:, 0] - b[0]) / 12) ** 2) + brow_tilt * side * (p[:, 0] - b[0]) / 12)
    d[parts.brow_tops, 1] -= u(-0.8, 1.5)  # brow thickness
    nose = _gauss(p, p[1], 9, 9)
    d[:, 0] += nose * (p[:, 0] - 56) * u(-0.25, 0.25)
    d[:, 1] += nose * u(-3.5, 3.5)
    mouth = p[parts.outer_lips].mean(0)
    wm = _gauss(p, mouth, 12, 6)
    d[:, 0] += wm * (p[:, 0] - 56) * u(-0.18, 0.18)
    d[:, 1] += wm * u(-2.5, 2.5)
    d[parts.outer_upper[1:-1], 1] -= u(-1, 2)
    d[parts.outer_lower[1:-1], 1] += u(-1, 2.5)
    return d + _random_field(rng, p, 1.5)


def _random_field(rng: np.random.Generator, p: np.ndarray, amplitude: float) -> np.ndarray:
    """A sum of broad Gaussian bumps with random displacement vectors: smooth, so it never folds the mesh."""
    d = np.zeros_like(p)
    for centre, vector in zip(rng.uniform((25, 35), (87, 110), (6, 2)), rng.normal(0, amplitude, (6, 2)), strict=True):
        d += _gauss(p, centre, 14, 14)[:, None] * vector
    return d


def sample_identity(identity_seed: int) -> FaceIdentity:
    """The geometry, colours, hair and skin marks of one synthetic person, a pure function of ``identity_seed``."""
    rng = np.random.default_rng(identity_seed)
    parts = _parts()
    points = parts.neutral.copy()
    d = _identity_shape(rng, points[:, :2], parts)
    d = 0.5 * (d + d[parts.flip] * (-1, 1))  # symmetric: each point moves as its mirror partner does, mirrored
    points[:, :2] += d + _random_field(rng, points[:, :2], 0.3)  # plus a small asymmetry, as in real faces
    nose = _gauss(points, points[1], 8, 10)
    points[:, 2] *= 1 + rng.uniform(-0.1, 0.1) + nose * rng.uniform(-0.25, 0.25)  # face depth, nose prominence
    tone = rng.uniform(0, len(_SKIN_TONES) - 1)
    skin = np.array([np.interp(tone, np.arange(len(_SKIN_TONES)), channel) for channel in _SKIN_TONES.T])
    skin = np.clip(skin * rng.uniform(0.96, 1.04, 3), 0, 255)
    dark = tone > 5
    weights = _HAIR_WEIGHTS.copy()
    weights[_FAIR_HAIR] *= 0.1 if dark else 1.0
    hair = np.clip(_HAIR_COLOURS[rng.choice(len(weights), p=weights / weights.sum())] * rng.uniform(0.85, 1.15), 0, 255)
    weights = _IRIS_WEIGHTS[dark]
    iris = np.clip(_IRIS_COLOURS[rng.choice(len(weights), p=weights / weights.sum())] * rng.uniform(0.85, 1.15), 0, 255)
    lip = (skin * 0.85) + rng.uniform(0.3, 0.55) * (np.array([180.0, 70, 85]) - skin * 0.85)
    brow = hair + rng.uniform(0.2, 0.6) * (np.array([25.0, 20, 18]) - hair)
    long_hair = rng.random() < 0.4
    cranium, hair_back, hair_front, strands = _head_top(rng, points, parts, long_hair)
    beard = rng.uniform(0.3, 0.7) if rng.random() < 0.12 else 0.0
    moustache = rng.uniform(1.5, 3.5) if rng.random() < (0.7 if beard else 0.1) else 0.0
    return FaceIdentity(
        seed=identity_seed,
        points=points,
        skin=skin,
        hair=hair,
        brow=brow,
        lip=lip,
        iris=iris,
        texture=_skin_texture(rng, points, parts, stubble=beard == 0 and rng.random() < 0.15),
        cranium=cranium,
        hair_back=hair_back,
        hair_front=hair_front,
        strands=strands,
        ears=np.empty((0, 12, 3)) if long_hair and len(hair_back) else _ears(points, parts),  # long hair hides ears
        neck=_neck(points, parts),
        beard=beard,
        moustache=moustache,
        lash=rng.uniform(0.8, 1.8),
    )


def _head_top(rng: np.random.Generator, points: np.ndarray, parts: _Parts, long_hair: bool) -> tuple[np.ndarray, ...]:
    """In 3D: the bare skull above the mesh and the hair behind the head (point clouds to take the hull of; either is
    empty), the hair over the forehead (a polygon) and its combing lines (segments). The mesh stops at the top of the
    forehead; heads do not."""
    skull = points[parts.skull]
    centre = np.array([skull[:, 0].mean(), skull[[0, -1], 1].mean()])
    radii = np.array([np.ptp(skull[:, 0]) / 2 + 1, centre[1] - skull[:, 1].min() + rng.uniform(10, 18)])
    angle = np.linspace(math.pi, 2 * math.pi, 17)
    ring = np.column_stack([np.cos(angle), np.sin(angle)])
    ring = np.sign(ring) * np.abs(ring) ** 0.8  # a squarish dome: the mesh's temples stay inside it

    def dome(grow: np.ndarray | float) -> np.ndarray:
        return np.column_stack([centre + ring * (radii + np.asarray(grow).reshape(-1, 1)), np.full(len(ring), 30.0)])

    if rng.random() < 0.06:  # bald: the bare skull is skin
        return dome(0.0), np.empty((0, 3)), np.empty((0, 3)), np.empty((0, 2, 3))
    volume = rng.uniform(1, 10) * (0.5 + 0.5 * np.sin(angle) ** 2) * (1 + rng.uniform(-0.3, 0.3) * np.cos(angle))
    back = dome(volume)
    if long_hair:  # falls behind the neck to below the crop
        length, spread = rng.uniform(110, 170), rng.uniform(0, 8)
        back = np.vstack([back, [(back[0, 0] - spread, length, 30), (back[-1, 0] + spread, length, 30)]])
    u = np.linspace(-1, 1, len(ring))[:, None]
    skull = skull[np.linspace(0, len(skull) - 1, len(ring)).round().astype(int)]  # one per dome point
    fringe = rng.uniform(1, 12) * np.sqrt(1 - u**2) * (1 + rng.uniform(-0.5, 0.5) * u)
    towards = points[_BRIDGE] - skull
    hairline = skull + towards * np.minimum(fringe / np.linalg.norm(towards[:, :2], axis=1, keepdims=True), 0.9)
    top = dome(np.minimum(volume, 1.5))
    # Only above the brows: lower down, the sides are hair behind the head, which the face hides as it turns.
    above = np.maximum(top[:, 1], hairline[:, 1]) < points[parts.brow_tops, 1].min() - 2
    top, hairline = top[above], hairline[above]
    strands = np.stack([hairline, hairline + 0.85 * (top - hairline)], axis=1)[1:-1]  # inside the outline
    return np.empty((0, 3)), back, np.vstack([top, hairline[::-1]]), strands


def _ears(points: np.ndarray, parts: _Parts) -> np.ndarray:
    """Ellipses in planes turned mostly backwards, so they narrow as the head turns away."""
    angles = np.linspace(0, 2 * math.pi, 12, endpoint=False)[:, None]
    ears = []
    for ear, side in zip(_pair(_EAR, parts.flip), (-1, 1), strict=True):
        centre = points[ear[0]] + (side * 1.0, 5.0, 10.0)
        across = np.array([side * 0.8, 0.0, 0.6])
        ears.append(centre + 6 * np.cos(angles) * across + 11 * np.sin(angles) * (0.0, 1.0, 0.0))
    return np.stack(ears)


def _neck(points: np.ndarray, parts: _Parts) -> np.ndarray:
    left, right = points[_JAW], points[parts.flip[_JAW]]
    top, bottom = left[1] - 10, left[1] + 80
    return np.array(
        [(left[0] + 4, top, 30), (right[0] - 4, top, 30), (right[0] - 2, bottom, 30), (left[0] + 2, bottom, 30)]
    )


def _skin_texture(rng: np.random.Generator, points: np.ndarray, parts: _Parts, stubble: bool) -> np.ndarray:
    """Per-identity multiplicative skin detail in template pixels: tone patches, eye sockets, blush, stubble, freckles
    and moles."""
    size = REFERENCE_SIZE
    grid = (np.mgrid[0:size, 0:size][::-1].reshape(2, -1).T + 0.5).astype(np.float64)
    xy = points[:, :2]
    face: np.ndarray = np.zeros((size, size), np.uint8)  # the face mask, then its blurred coverage (flat)
    cv2.fillPoly(face, [_fixed(xy[parts.skull.tolist() + parts.jaw[::-1].tolist()])], 255, cv2.LINE_AA, _SHIFT)
    face = cv2.GaussianBlur(face.astype(np.float32) / 255, (0, 0), 4).reshape(-1)
    patches = cv2.resize(rng.normal(0, 1, (5, 5)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    shade = 1 + rng.uniform(0.02, 0.06) * patches.reshape(-1)
    socket, blush, tint = rng.uniform(0.03, 0.1), rng.uniform(0, 0.12), np.ones((len(grid), 3))
    for eye, cheek in zip(parts.eyes, parts.cheeks, strict=True):
        shade -= socket * _gauss(grid, xy[eye].mean(0), 9, 5)
        tint -= blush * _gauss(grid, xy[cheek], 7, 7)[:, None] * (0.2, 1.0, 1.0)
    if stubble:
        shade -= rng.uniform(0.08, 0.2) * _gauss(grid, xy[parts.jaw].mean(0) - (0, 4), 22, 10)
    factor = 1 + face[:, None] * (shade[:, None] * tint - 1)
    texture = np.clip(factor * _TEXTURE_ONE, 0, 255).reshape(size, size, 3).astype(np.uint8)
    centre = xy[1]
    if rng.random() < 0.25:  # freckles over the nose and cheeks
        spots = centre + rng.normal(0, (12, 4), (int(rng.integers(15, 50)), 2))
        for spot in spots:
            _circle(
                texture, spot, rng.uniform(0.4, 0.8), _TEXTURE_ONE * rng.uniform(0.75, 0.9) * np.array((1, 0.95, 0.9))
            )
    for _ in range(rng.choice(4, p=(0.35, 0.35, 0.2, 0.1))):  # moles anywhere on the face
        spot = centre + rng.uniform(-1, 1, 2) * (30, 28)
        if face[int(spot[1]) * size + int(spot[0])] > 0.5:
            _circle(texture, spot, rng.uniform(0.7, 1.4), _TEXTURE_ONE * np.array((0.45, 0.35, 0.3)))
    return texture


@dataclass(frozen=True)
class _Pose:
    """Rotation about ``centre``, orthographic projection, then scale and shift in the crop, into output pixels."""

    rotation: np.ndarray
    centre: np.ndarray
    scale: float  # total: pose scale times output pixels per template pixel
    offset: np.ndarray

    def project(self, points: np.ndarray) -> np.ndarray:
        return ((points - self.centre) @ self.rotation.T)[..., :2] * self.scale + self.offset


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """x right, y down, z away from the camera; yaw about y, pitch about x, roll about z, in radians."""
    (cy, sy), (cp, sp), (cr, sr) = ((math.cos(a), math.sin(a)) for a in (yaw, pitch, roll))
    yaw_m = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    pitch_m = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    roll_m = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return roll_m @ pitch_m @ yaw_m


def _sample_pose(rng: np.random.Generator, cfg: SyntheticFacesConfig, points: np.ndarray) -> _Pose:
    yaw, pitch, roll = np.radians(rng.uniform(-1, 1, 3) * (cfg.max_yaw, cfg.max_pitch, cfg.max_roll))
    scale = 1 + rng.uniform(-1, 1) * cfg.scale_jitter
    shift = rng.uniform(-1, 1, 2) * cfg.shift_px
    centre = points.mean(0)
    k = cfg.image_size / REFERENCE_SIZE
    return _Pose(_rotation(yaw, pitch, roll), centre, scale * k, (centre[:2] + shift) * k)


def _fixed(points: np.ndarray) -> np.ndarray:
    """Pixel-edge float coordinates to cv2's fixed-point pixel-centre ones."""
    return np.round((points - 0.5) * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def _fill(image: np.ndarray, points: np.ndarray, colour: ArrayLike) -> None:
    cv2.fillPoly(image, [_fixed(points)], _scalar(colour), cv2.LINE_AA, _SHIFT)


def _line(image: np.ndarray, points: np.ndarray, colour: ArrayLike, thickness: float, closed: bool = False) -> None:
    cv2.polylines(image, [_fixed(points)], closed, _scalar(colour), max(1, round(thickness)), cv2.LINE_AA, _SHIFT)


def _circle(image: np.ndarray, centre: np.ndarray, radius: float, colour: ArrayLike) -> None:
    fixed = tuple(int(v) for v in _fixed(np.asarray(centre)).reshape(2))
    cv2.circle(image, fixed, max(1, round(radius * (1 << _SHIFT))), _scalar(colour), -1, cv2.LINE_AA, _SHIFT)


def _scalar(colour: ArrayLike) -> tuple[float, ...]:
    return tuple(float(c) for c in np.atleast_1d(colour))


def render_face(
    identity: FaceIdentity, rng: np.random.Generator, cfg: SyntheticFacesConfig
) -> tuple[np.ndarray, np.ndarray]:
    """One image of ``identity``: (H, W, 3) uint8 RGB, and the (468, 2) float32 mesh points it was drawn from."""
    parts = _parts()
    s = cfg.expression
    open_ = s * rng.uniform(0.2, 1) if rng.random() < 0.35 else 0.0
    blink = s * rng.uniform(0.5, 1) if rng.random() < 0.1 else 0.0
    brows = s * rng.uniform(0, 1) if rng.random() < 0.3 else 0.0
    points = identity.points.copy()
    points[:, :2] = _expression(points[:, :2], parts, open_, s * rng.uniform(-0.3, 1), brows, blink)
    pose = _sample_pose(rng, cfg, identity.points)
    size = cfg.image_size
    fg = np.zeros((size, size, 3), np.uint8)  # the head, premultiplied by its coverage in ``alpha``
    alpha = np.zeros((size, size), np.uint8)
    mesh = pose.project(points)
    _draw_head(fg, alpha, identity, pose, points, mesh)
    _draw_features(fg, identity, pose, points, mesh, rng.uniform(-0.12, 0.12, 2) * (s, 0.5 * s))
    return _light(rng, cfg, fg, alpha, pose), mesh.astype(np.float32)


def _draw_head(
    fg: np.ndarray, alpha: np.ndarray, identity: FaceIdentity, pose: _Pose, points: np.ndarray, mesh: np.ndarray
) -> None:
    """Back to front: hair behind, neck, ears, skin (the silhouette of mesh and skull), beard, fringe; then the
    identity's texture, which lives in template pixels and follows the face by an affine fit of template to image."""
    parts, skin = _parts(), identity.skin
    silhouettes = []
    if len(identity.hair_back):
        silhouettes.append((cv2.convexHull(pose.project(identity.hair_back).astype(np.float32))[:, 0], identity.hair))
    silhouettes.append((pose.project(identity.neck), skin * 0.8))
    silhouettes += [(pose.project(ear), skin * 0.92) for ear in identity.ears]
    head = np.vstack([mesh, pose.project(identity.cranium)]).astype(np.float32)
    silhouettes.append((cv2.convexHull(head)[:, 0], skin))
    for polygon, colour in silhouettes:
        _fill(fg, polygon, colour)
        _fill(alpha, polygon, 255)
    if identity.beard:
        jaw = points[parts.jaw]
        inner = jaw + identity.beard * (points[parts.outer_lips].mean(0) - jaw)
        _fill(fg, pose.project(np.vstack([jaw, inner[::-1]])), identity.hair * 0.85)
    if len(identity.hair_front):
        front = pose.project(identity.hair_front)
        _fill(fg, front, identity.hair)
        _fill(alpha, front, 255)
        strands = list(_fixed(pose.project(identity.strands)).reshape(-1, 2, 1, 2))
        cv2.polylines(fg, strands, False, _scalar(identity.hair * 0.75), 1, cv2.LINE_AA, _SHIFT)
    design = np.column_stack([identity.points[:, :2], np.ones(len(mesh))])
    affine = np.linalg.lstsq(design, mesh, rcond=None)[0].T
    affine[:, 2] += affine[:, :2].sum(1) * 0.5 - 0.5  # texel and pixel indices are centres: index = coordinate - 0.5
    size = fg.shape[0]
    texture = cv2.warpAffine(identity.texture, affine, (size, size), borderValue=(_TEXTURE_ONE,) * 3)
    fg[:] = np.clip(fg * (texture.astype(np.float32) * (1 / _TEXTURE_ONE)), 0, 255)


def _draw_features(
    fg: np.ndarray, identity: FaceIdentity, pose: _Pose, points: np.ndarray, mesh: np.ndarray, gaze: np.ndarray
) -> None:
    """Eyes, brows, nose, mouth and moustache over the skin."""
    parts, skin, k = _parts(), identity.skin, pose.scale
    _draw_eyes(fg, identity, pose, points, mesh, gaze)
    for brow in parts.brows:
        _fill(fg, mesh[brow], identity.brow)
    for wing in parts.nose_wings:
        _line(fg, mesh[wing], skin * 0.72, 0.8 * k)
    for nostril in parts.nostrils:
        centre = mesh[nostril].mean(0)
        _fill(fg, centre + (mesh[nostril] - centre) * 0.8, skin * 0.35)
    _line(fg, mesh[list(_NOSE_RIDGE)] + np.array([0.8 * k, 0]), skin * 0.85, 0.8 * k)
    _fill(fg, mesh[parts.inner_lips], (70, 25, 30))
    upper, lower = points[parts.mouth_line], points[parts.inner_lower]
    opening = np.interp(upper[:, 0], lower[:, 0], lower[:, 1]) - upper[:, 1]
    teeth = upper + np.column_stack([np.zeros(len(upper)), np.clip(0.6 * opening, 0, 2.5), np.zeros(len(upper))])
    _fill(fg, pose.project(np.vstack([upper, teeth[::-1]])), (235, 232, 220))
    _fill(fg, mesh[parts.upper_lip], identity.lip * 0.88)
    _fill(fg, mesh[parts.lower_lip], identity.lip)
    _line(fg, mesh[parts.mouth_line], identity.lip * 0.55, 0.8 * k)
    if identity.moustache:
        lip = points[parts.outer_upper] + np.array([0, 0.5, 0])
        top = lip - np.array([0, identity.moustache, 0])
        _fill(fg, pose.project(np.vstack([lip, top[::-1]])), identity.hair * 0.85)


def _draw_eyes(
    fg: np.ndarray, identity: FaceIdentity, pose: _Pose, points: np.ndarray, mesh: np.ndarray, gaze: np.ndarray
) -> None:
    """Sclera, then iris and pupil clipped to the eye opening, then the upper-lid line."""
    parts = _parts()
    loops = [mesh[eye] for eye in parts.eyes]
    for loop in loops:
        _fill(fg, loop, (236, 232, 226))
    both = np.vstack(loops)
    size = fg.shape[0]
    x0, y0 = np.clip(np.floor(both.min(0)).astype(int) - 1, 0, size)
    x1, y1 = np.clip(np.ceil(both.max(0)).astype(int) + 2, 0, size)
    if x1 > x0 and y1 > y0:
        roi = fg[y0:y1, x0:x1]
        layer, mask = roi.copy(), np.zeros(roi.shape[:2], np.uint8)
        for eye, loop in zip(parts.eyes, loops, strict=True):
            width = np.ptp(points[eye, 0])
            centre = pose.project(points[eye].mean(0) + np.array([*gaze, 0]) * width) - (x0, y0)
            _circle(layer, centre, 0.22 * width * pose.scale, identity.iris)
            _circle(layer, centre, 0.09 * width * pose.scale, (15, 12, 12))
            _circle(layer, centre - 0.06 * width * pose.scale, 0.04 * width * pose.scale, (250, 250, 250))
            _fill(mask, loop - (x0, y0), 255)
        a = mask[..., None] * (1 / 255)
        roi[:] = roi * (1 - a) + layer * a
    for upper in parts.upper_lids:
        _line(fg, mesh[upper], (35, 25, 22), identity.lash * pose.scale)


def _light(
    rng: np.random.Generator, cfg: SyntheticFacesConfig, fg: np.ndarray, alpha: np.ndarray, pose: _Pose
) -> np.ndarray:
    """Shade the head with a rotated-ellipsoid normal proxy, put it on a background, then camera effects."""
    size, strength = cfg.image_size, cfg.lighting
    tilt, azimuth = math.radians(60) * strength * rng.random(), rng.uniform(0, 2 * math.pi)
    light = np.array([math.sin(tilt) * math.cos(azimuth), math.sin(tilt) * math.sin(azimuth), -math.cos(tilt)])
    ambient = 0.75 - strength * rng.uniform(0, 0.35)
    shade = ambient + (1 - ambient) * np.clip(_head_normals(pose, size) @ light, 0, 1)
    shade = cv2.resize(shade.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    a = alpha.astype(np.float32)[..., None] * (1 / 255)
    image = _background(rng, size) * (1 - a) + fg * shade[..., None]
    gains = (1 + strength * rng.uniform(-0.25, 0.2)) * (1 + strength * rng.uniform(-0.08, 0.08) * np.array([1, 0, -1]))
    contrast = 1 + strength * rng.uniform(-0.25, 0.15)
    image = (image * gains.astype(np.float32) - 128) * contrast + 128
    if rng.random() < cfg.blur_prob:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.2) * size / REFERENCE_SIZE)
    image += rng.standard_normal(image.shape, np.float32) * (cfg.noise_std * rng.uniform(0.3, 1))
    image = np.clip(image, 0, 255).astype(np.uint8)
    if rng.random() < cfg.jpeg_prob:
        _, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 91))])
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
        assert decoded is not None  # a JPEG imencode just wrote always decodes
        image = decoded[..., ::-1]
    return np.ascontiguousarray(image)


def _head_normals(pose: _Pose, size: int, grid: int = 24) -> np.ndarray:
    """(grid, grid, 3) camera-frame normals of a head-sized ellipsoid turned with the pose, seen through each pixel."""
    centre, radii = np.array([56.0, 68.0, 28.0]), np.array([46.0, 56.0, 42.0])
    uv = (np.mgrid[0:grid, 0:grid][::-1].transpose(1, 2, 0) + 0.5) * (size / grid)
    xy = (uv - pose.offset) / pose.scale  # rotated-frame x, y of each pixel's ray
    back = pose.rotation.T  # camera frame -> head frame
    a = xy @ back[:, :2].T + (pose.centre - centre)
    b = back[:, 2]
    qa, qb, qc = (b * b / radii**2).sum(), (a * b / radii**2).sum(-1), (a * a / radii**2).sum(-1) - 1
    z = (-qb - np.sqrt(np.maximum(qb * qb - qa * qc, 0))) / qa  # the near intersection; the rim outside the head
    normal = (a + z[..., None] * b) / radii**2
    normal = normal @ pose.rotation.T
    return normal / np.linalg.norm(normal, axis=-1, keepdims=True)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A per-image two-colour gradient with blotches, unrelated to the identity."""
    colours = rng.uniform(20, 235, (2, 3))
    colours = colours.mean(1, keepdims=True) + (colours - colours.mean(1, keepdims=True)) * rng.uniform(0.1, 0.7)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = (np.mgrid[0:6, 0:6] + 0.5) / 6 - 0.5
    ramp = (0.5 + math.cos(angle) * xx + math.sin(angle) * yy)[..., None]
    small = colours[0] + ramp * (colours[1] - colours[0]) + rng.normal(0, 8, (6, 6, 3))
    return cv2.resize(small.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)


class SyntheticFaces(Dataset):
    """``num_identities x images_per_identity`` rendered faces; item ``i`` shows identity ``i // images_per_identity``.

    Items are pure functions of ``(cfg.seed, i)``: bit-identical in any order, process or worker.
    """

    def __init__(self, cfg: SyntheticFacesConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self._landmarks = get_landmark_set(cfg.landmark_set)
        self._identities: dict[int, FaceIdentity] = {}

    def __len__(self) -> int:
        return self.cfg.num_identities * self.cfg.images_per_identity

    @property
    def num_classes(self) -> int:
        return self.cfg.num_identities

    @property
    def labels(self) -> np.ndarray:
        """(N,) the identity of every item, as the file-backed datasets expose it."""
        return np.repeat(np.arange(self.cfg.num_identities), self.cfg.images_per_identity)

    @property
    def landmark_set(self) -> LandmarkSet:
        return self._landmarks

    def identity(self, label: int) -> FaceIdentity:
        """The identity behind ``label``, made on first use and cached."""
        if label not in self._identities:
            seed = np.random.SeedSequence([self.cfg.seed, _IDENTITY_STREAM, label]).generate_state(1, np.uint64)[0]
            self._identities[label] = sample_identity(int(seed))
        return self._identities[label]

    def __getitem__(self, index: int) -> dict:
        index = operator.index(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} synthetic faces")
        label, number = divmod(index, self.cfg.images_per_identity)
        rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, _IMAGE_STREAM, label, number]))
        image, mesh = render_face(self.identity(label), rng, self.cfg)
        landmarks = self._landmarks.points_on(mesh, self.cfg.image_size)
        return {
            "image": image,
            "label": label,
            "index": index,
            "landmarks": landmarks,
            "landmark_valid": np.ones(len(landmarks), dtype=bool),
        }


def synthetic_pairs(faces: SyntheticFaces, num_pairs: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """A verification set from ``faces``: 2 * num_pairs images (pair i is 2i, 2i + 1) and issame (num_pairs,) bool.

    Pairs alternate same / different identity, like the standard sets' balanced folds.
    """
    per_identity = faces.cfg.images_per_identity
    if faces.num_classes < 2 or per_identity < 2:
        raise ConfigError("synthetic pairs need at least 2 identities with at least 2 images each")
    rng = np.random.default_rng(seed)
    images, issame = [], np.arange(num_pairs) % 2 == 0
    for same in issame:
        a = int(rng.integers(faces.num_classes))
        b = a if same else int((a + rng.integers(1, faces.num_classes)) % faces.num_classes)
        i, j = rng.choice(per_identity, size=2, replace=False)
        images += [faces[a * per_identity + int(i)]["image"], faces[b * per_identity + int(j)]["image"]]
    return images, issame


def synthetic_batch(
    landmark_set: str, count: int, seed: int = 0, image_size: int = 112
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` synthetic faces of ``count`` identities as model inputs: normalised images (count, 3, S, S) float32
    at ``image_size`` S and their landmarks (count, K, 2) float32 pixels (ONNX parity checks, benchmarks, tests)."""
    faces = SyntheticFaces(
        SyntheticFacesConfig(
            num_identities=count, images_per_identity=1, landmark_set=landmark_set, seed=seed, image_size=image_size
        )
    )
    batch = collate_faces([faces[i] for i in range(count)])
    return normalize_images(batch["image"]), batch["landmarks"].float()
