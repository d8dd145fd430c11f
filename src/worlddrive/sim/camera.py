"""Renderers that turn a `WorldState` into what the policy sees: a front camera image and an ego-centric BEV raster.

Front camera: a pinhole camera 1.5 m above the ego, 90 deg horizontal field of view, pitched 4 deg down. Default size
256 x 128 (focal length 128 px): at 30 m a pedestrian is 7-8 px tall and 2 px wide and a lit lamp (drawn 0.5 m
across, larger than life, in the red / yellow / green slot of its head) is 2 px, so a person can still tell the
light's colour and see the pedestrian; the frame is 16 x 8 patches of 16 px for the vision encoder, and renders in
about 1.5-2 ms (500-650 frames/s on one core of the 2-core dev box). 320 x 160 renders as fast but costs 1.6x the
tokens for a little more legibility.

BEV: 128 x 128 px at 0.5 m/px, the ego 3/4 down facing up: 48 m ahead, 16 m behind, 32 m either side.

Both renderers are pure functions of (state, road): deterministic, and they never write to either. Static road
geometry is cut once per RoadMap (cached until the map is garbage-collected, so treat a map as immutable once drawn;
a map read from a network file also on disk, once per machine) into convex ground tiles with no edge longer than
`TILE` metres; each frame culls tiles by distance, clips the rest against the near plane and fills them with one
`cv2.fillPoly` call per colour.
`cv2.fillPoly` fills even-odd, so tiles of one colour that overlap are put in different batches (calls).
3D objects (vehicle boxes, pedestrians, light and sign poles, lamps, sign plates) are flat-shaded convex faces,
back-face culled and drawn far to near (painter's algorithm) after the ground.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
import weakref
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Self

import cv2
import numpy as np
from numpy.typing import ArrayLike

from worlddrive.sim import state as _state
from worlddrive.sim.network import cache_dir
from worlddrive.sim.state import (
    CAR,
    DASHED_WHITE,
    EGO_X,
    EGO_Y,
    EGO_YAW,
    PARKED,
    SOLID_YELLOW,
    SPEED_SIGN,
    STOP_SIGN,
    TRUCK,
    YIELD_SIGN,
    RoadMap,
    WorldState,
    box_corners,
    to_ego_frame,
)

TILE = 10.0  # longest edge of a ground tile, metres: keeps culling tight and clipped pieces small
MARK_HALF_WIDTH = 0.075
STOP_HALF_WIDTH = 0.2
DASH = (3.0, 6.0)  # painted, gap, metres
ZEBRA = 0.6  # width of a crosswalk stripe and of the gap between stripes
SHIFT = 4  # cv2 fractional bits: vertices are placed to 1/16 px
MAX_VERTS = 12  # every 3D face is padded to this many vertices so all faces are clipped in one NumPy pass

# Colours, RGB.
SKY_TOP, SKY_HORIZON = (110, 160, 220), (200, 220, 235)
GRASS_FAR, GRASS_NEAR = (120, 140, 100), (80, 112, 62)
SIDEWALK_RGB, ROAD_RGB = (172, 172, 166), (74, 74, 78)
WHITE_RGB, YELLOW_RGB = (235, 235, 235), (235, 185, 40)
CAR_RGB, PARKED_RGB = (45, 95, 200), (150, 122, 88)
TRUCK_CAB_RGB, TRUCK_BOX_RGB = (215, 120, 35), (215, 215, 205)
GLASS_RGB, TAIL_RGB = (55, 65, 80), (170, 30, 30)
SKIN_RGB, HAIR_RGB, TROUSERS_RGB = (222, 178, 145), (60, 42, 30), (50, 55, 75)
SHIRTS = ((190, 60, 60), (60, 110, 180), (230, 200, 80), (90, 160, 90), (150, 80, 160), (230, 130, 50), (230, 230, 230))
POLE_RGB, HOUSING_RGB, PLATE_BACK_RGB = (95, 95, 100), (30, 30, 32), (140, 140, 140)
LAMP_RGB = ((40, 235, 90), (255, 200, 20), (255, 35, 25))  # indexed by GREEN / YELLOW / RED
SIGN_RED = (200, 25, 30)
SUN = np.array([0.45, -0.35, 0.82]) / np.linalg.norm([0.45, -0.35, 0.82])  # fixed in the world frame

# Traffic light head: lamps stacked red (top), yellow, green; drawn bigger than life so 2 px survive at 30 m.
POLE_TOP, HEAD_TOP, HEAD_WIDTH, HEAD_DEPTH, LAMP_RADIUS = 2.8, 4.6, 0.7, 0.35, 0.25
LAMP_Z = (3.1, 3.7, 4.3)  # indexed by GREEN / YELLOW / RED
LAMP_MIN_COS = 0.3  # the lamp shows only within ~70 deg of its axis; from the side or back the head is dark
PLATE_Z = 2.2

BEV_CHANNELS = (
    "drivable",
    "lanes",
    "crosswalks",
    "vehicles",
    "pedestrians",
    "light_green",
    "light_yellow",
    "light_red",
    "route",
    "ego",
)
_CH = {name: i for i, name in enumerate(BEV_CHANNELS)}
_BEV_PAINT = {  # display colours, painted in this order
    "drivable": (70, 70, 76),
    "crosswalks": (140, 140, 115),
    "lanes": (225, 225, 225),
    "route": (150, 90, 210),
    "light_green": LAMP_RGB[0],
    "light_yellow": LAMP_RGB[1],
    "light_red": LAMP_RGB[2],
    "vehicles": (60, 140, 255),
    "pedestrians": (255, 150, 40),
    "ego": (255, 255, 255),
}


# ----------------------------------------------------------------------------------------------- static geometry


def _clean(poly: np.ndarray) -> np.ndarray:
    """Drop repeated and collinear vertices and orient counter-clockwise, so ear clipping sees a plain polygon."""
    p = np.asarray(poly, np.float64)
    p = p[np.linalg.norm(p - np.roll(p, 1, axis=0), axis=1) > 1e-6]
    if len(p) < 3:
        return p
    a, b = p - np.roll(p, 1, axis=0), np.roll(p, -1, axis=0) - p
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    p = p[np.abs(cross) > 1e-9 * np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)]
    area = np.sum(p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1])
    return p if area > 0 else p[::-1]


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a[..., 0] - o[..., 0]) * (b[..., 1] - o[..., 1]) - (a[..., 1] - o[..., 1]) * (b[..., 0] - o[..., 0])


def _densify(p: np.ndarray, max_edge: float) -> np.ndarray:
    """Insert points so no edge of the closed polygon (K, 2) is longer than max_edge; shared edges split alike."""
    nxt = np.roll(p, -1, axis=0)
    n = np.maximum(1, np.ceil(np.linalg.norm(nxt - p, axis=1) / max_edge).astype(int))  # pieces per edge
    t = np.concatenate([np.arange(k) / k for k in n])  # (sum n,)
    start = np.repeat(np.arange(len(p)), n)
    return p[start] + t[:, None] * (nxt[start] - p[start])


def _ear_clip(p: np.ndarray) -> np.ndarray:
    """Counter-clockwise simple polygon (K, 2) -> triangles (K-2, 3) as vertex indices.

    Of all ears it clips the one with the shortest new diagonal, which cuts strips (lanes, sidewalks) into zig-zags
    instead of fans of ever longer slivers. Incremental: clipping a vertex changes the candidate ears of its two
    neighbours only, and for every other candidate removes one vertex that may have lain inside it, so each step
    updates O(K) tests instead of redoing all O(K^2).
    """
    n = len(p)
    prev, nxt = np.roll(np.arange(n), 1), np.roll(np.arange(n), -1)  # (K,) ring neighbours of each vertex
    alive = np.ones(n, bool)

    def ear_tests(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidate ears at vertices v: which vertices lie inside (V, K), convexity (V,), new diagonal (V,)."""
        a, b, c = p[prev[v]], p[v], p[nxt[v]]
        inside = (_cross(a[:, None], b[:, None], p[None]) > 1e-9) & (_cross(b[:, None], c[:, None], p[None]) > 1e-9)
        inside &= _cross(c[:, None], a[:, None], p[None]) > 1e-9
        return inside, _cross(a, b, c), np.linalg.norm(c - a, axis=1)

    inside, convex, diag = ear_tests(np.arange(n))  # (K, K), (K,), (K,)
    count = inside.sum(axis=1)  # (K,) remaining vertices inside each candidate
    tris = []
    for _ in range(n - 3):
        ear = alive & (convex > 1e-12) & (count == 0)
        # A self-touching input may have no clean ear: clip the most convex vertex rather than loop forever.
        if ear.any():
            k = int(np.argmin(np.where(ear, diag, np.inf)))
        else:
            k = int(np.argmax(np.where(alive, convex, -np.inf)))
        i, j = prev[k], nxt[k]
        tris.append((i, k, j))
        alive[k] = False
        nxt[i], prev[j] = j, i
        count -= inside[:, k]
        v = np.array([i, j])
        inside[v], convex[v], diag[v] = ear_tests(v)
        count[v] = (inside[v] & alive).sum(axis=1)
    tris.append(tuple(np.flatnonzero(alive)))
    return np.array(tris)


def _refine(verts: np.ndarray, tris: np.ndarray, max_edge: float) -> np.ndarray:
    """Split the longest edge, in both triangles that share it, until none exceeds max_edge: no T-junctions."""
    while True:
        p = verts[tris]  # (T, 3, 2)
        length = np.linalg.norm(p[:, [1, 2, 0]] - p, axis=2)  # (T, 3), edge k runs from vertex k to k + 1
        t, k = divmod(int(np.argmax(length)), 3)
        if length[t, k] <= max_edge:
            return p
        a, b = tris[t, k], tris[t, (k + 1) % 3]
        verts = np.vstack([verts, (verts[a] + verts[b]) / 2])
        mid = len(verts) - 1
        shared = np.flatnonzero(((tris == a) | (tris == b)).sum(1) == 2)
        halves = []
        for tri in tris[shared]:
            i = next(i for i in range(3) if {tri[i], tri[(i + 1) % 3]} == {a, b})
            halves += [(tri[i], mid, tri[(i + 2) % 3]), (mid, tri[(i + 1) % 3], tri[(i + 2) % 3])]
        tris = np.vstack([np.delete(tris, shared, axis=0), halves])


def _tessellate(poly: np.ndarray) -> np.ndarray:
    """Simple polygon (K, 2) -> convex tiles (T, 4, 2) (triangles, last vertex repeated) with edges <= TILE."""
    p = _clean(poly)
    if len(p) < 3:
        return np.zeros((0, 4, 2))
    p = _densify(p, 0.8 * TILE)  # boundary pieces short enough that strips need no refining
    tri = _refine(p, _ear_clip(p), TILE)
    return np.concatenate([tri, tri[:, 2:]], axis=1)


def _pieces(line: np.ndarray, dash: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """Resample a polyline at its vertices, every TILE m and at dash ends: points (K, 2), painted pieces (K-1,)."""
    p = np.asarray(line, np.float64)
    p = p[np.r_[True, np.linalg.norm(np.diff(p, axis=0), axis=1) > 1e-6]]
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
    cuts = [s, np.arange(0.0, s[-1], TILE)]
    if dash:
        starts = np.arange(0.0, s[-1], sum(dash))
        cuts += [starts, starts + dash[0]]
    ss = np.unique(np.clip(np.concatenate(cuts), 0.0, s[-1]))
    pts = np.stack([np.interp(ss, s, p[:, 0]), np.interp(ss, s, p[:, 1])], axis=1)
    painted = np.diff(ss) > 1e-6
    if dash:
        painted &= ((ss[:-1] + ss[1:]) / 2) % sum(dash) < dash[0]
    return pts, painted


def _strip_quads(line: np.ndarray, half_width: float, dash: tuple[float, float] | None = None) -> np.ndarray:
    """Thin ground quads (N, 4, 2) along a polyline; neighbours share their end edges exactly."""
    pts, painted = _pieces(line, dash)
    if len(pts) < 2:
        return np.zeros((0, 4, 2))
    t = np.gradient(pts, axis=0)
    n = np.stack([-t[:, 1], t[:, 0]], axis=1) / np.linalg.norm(t, axis=1, keepdims=True) * half_width
    quads = np.stack([pts[:-1] + n[:-1], pts[:-1] - n[:-1], pts[1:] - n[1:], pts[1:] + n[1:]], axis=1)
    return quads[painted]


def _segments(line: np.ndarray, dash: tuple[float, float] | None) -> np.ndarray:
    """Painted pieces of a marking as line segments (N, 2, 2), for the BEV."""
    pts, painted = _pieces(line, dash)
    return np.stack([pts[:-1], pts[1:]], axis=1)[painted]


def _zebra(rect: np.ndarray) -> np.ndarray:
    """Crosswalk rectangle (4, 2) -> stripes (N, 4, 2) running along the road, repeated across it."""
    p0 = rect[0].astype(np.float64)
    a, b = rect[1] - p0, rect[3] - p0
    if np.linalg.norm(a) < np.linalg.norm(b):
        a, b = b, a  # a runs across the road
    length = float(np.linalg.norm(a))
    n = max(1, int((length + ZEBRA) // (2 * ZEBRA)))
    t0 = (length - (2 * n - 1) * ZEBRA) / 2 + 2 * ZEBRA * np.arange(n)  # centred pattern
    u = a / length
    s0, s1 = p0 + t0[:, None] * u, p0 + (t0[:, None] + ZEBRA) * u  # (N, 2)
    return np.stack([s0, s1, s1 + b, s0 + b], axis=1)


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairs of convex (P, 4, 2) polygons -> (P,) True where interiors overlap (separating axis test)."""
    edges = np.concatenate([np.roll(a, -1, axis=1) - a, np.roll(b, -1, axis=1) - b], axis=1)  # (P, 8, 2)
    norm = np.linalg.norm(edges, axis=2)
    axes = np.stack([-edges[..., 1], edges[..., 0]], axis=2) / np.maximum(norm, 1e-12)[..., None]
    pa, pb = np.einsum("pkd,pvd->pkv", axes, a), np.einsum("pkd,pvd->pkv", axes, b)  # (P, 8, 4)
    apart = (pa.max(2) <= pb.min(2) + 1e-3) | (pb.max(2) <= pa.min(2) + 1e-3)
    return ~(apart & (norm > 1e-9)).any(axis=1)


def _touching_pairs(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of tiles (N, 4, 2) whose bounding boxes overlap, by sweeping along x."""
    lo, hi = tiles.min(axis=1), tiles.max(axis=1)  # (N, 2)
    order = np.argsort(lo[:, 0], kind="stable")
    lo, hi = lo[order], hi[order]
    end = np.searchsorted(lo[:, 0], hi[:, 0] - 1e-3)  # sorted tiles after i that start before i ends
    count = np.maximum(end - np.arange(len(lo)) - 1, 0)
    i = np.repeat(np.arange(len(lo)), count)
    j = i + 1 + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    y = (lo[j, 1] < hi[i, 1] - 1e-3) & (lo[i, 1] < hi[j, 1] - 1e-3)
    i, j = order[i[y]], order[j[y]]
    return np.minimum(i, j), np.maximum(i, j)


def _batches(tiles: np.ndarray) -> np.ndarray:
    """(N, 4, 2) tiles -> (N,) batch ids; tiles in one batch never overlap, so even-odd filling leaves no holes."""
    i, j = _touching_pairs(tiles)
    hit = _overlap(tiles[i], tiles[j])
    i, j = i[hit], j[hit]
    batch = np.zeros(len(tiles), int)
    if len(j) == 0:
        return batch
    order = np.argsort(j, kind="stable")
    i, j = i[order], j[order]
    later, starts = np.unique(j, return_index=True)
    for jj, earlier in zip(later, np.split(i, starts[1:]), strict=True):  # greedy colouring in index order
        taken = set(batch[earlier].tolist())
        batch[jj] = next(c for c in range(len(taken) + 1) if c not in taken)
    return batch


@dataclass
class _Ground:
    """Convex ground tiles of several paint layers, sorted by group = (layer, non-overlapping batch)."""

    hom: np.ndarray  # (N, 4, 3) world x, y, 1
    centre: np.ndarray  # (N, 2)
    radius: np.ndarray  # (N,)
    group: np.ndarray  # (N,) ascending
    group_layer: np.ndarray  # (G,) layer index of each group

    @classmethod
    def build(cls, layers: list[np.ndarray]) -> _Ground:
        pts, group, group_layer = [], [], []
        for layer, tiles in enumerate(layers):
            tiles = tiles.reshape(-1, 4, 2)
            batch = _batches(tiles)
            order = np.argsort(batch, kind="stable")
            pts.append(tiles[order])
            group.append(batch[order] + len(group_layer))
            group_layer += [layer] * (int(batch.max()) + 1 if len(batch) else 0)
        p = np.concatenate(pts)
        centre = p.mean(axis=1)
        radius = np.linalg.norm(p - centre[:, None], axis=2).max(axis=1)
        hom = np.concatenate([p, np.ones((*p.shape[:2], 1))], axis=2)
        return cls(hom, centre, radius, np.concatenate(group), np.array(group_layer, int))

    def near(self, xy: np.ndarray, reach: float) -> np.ndarray:
        """(N,) tiles that may lie within `reach` of xy."""
        return np.linalg.norm(self.centre - xy, axis=1) < reach + self.radius

    def runs(self, group: np.ndarray) -> list[tuple[int, int, int]]:
        """Contiguous (start, stop, layer) runs of a sorted group array."""
        if len(group) == 0:
            return []
        edges = np.r_[0, np.flatnonzero(np.diff(group)) + 1, len(group)]
        return [(int(a), int(b), int(self.group_layer[group[a]])) for a, b in itertools.pairwise(edges)]


@dataclass
class _MapGeometry:
    camera: _Ground  # layers: sidewalks, drivable, white paint, yellow paint
    bev: _Ground  # layers: drivable, crosswalks
    lanes: np.ndarray  # (M, 2, 2) painted marking segments
    lane_mid: np.ndarray  # (M, 2) their midpoints, for culling


_GROUND_RGB = (SIDEWALK_RGB, ROAD_RGB, WHITE_RGB, YELLOW_RGB)  # by _MapGeometry.camera layer
_BEV_GROUND_CH = (_CH["drivable"], _CH["crosswalks"])  # by _MapGeometry.bev layer


def _cat(parts: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, *shape))


def _build_geometry(road: RoadMap) -> _MapGeometry:
    drivable = _cat([_tessellate(p) for p in road.drivable], (4, 2))
    sidewalks = _cat([_tessellate(p) for p in road.sidewalks], (4, 2))
    kinds = [int(k) for k in road.marking_kind]
    dashes = [DASH if k == DASHED_WHITE else None for k in kinds]
    white = [
        _strip_quads(m, MARK_HALF_WIDTH, d)
        for m, d, k in zip(road.markings, dashes, kinds, strict=True)
        if k != SOLID_YELLOW
    ]
    yellow = [_strip_quads(m, MARK_HALF_WIDTH) for m, k in zip(road.markings, kinds, strict=True) if k == SOLID_YELLOW]
    white += [_strip_quads(line, STOP_HALF_WIDTH) for line in road.stop_lines]
    white += [_zebra(c) for c in road.crosswalks]
    crosswalks = np.array(road.crosswalks, np.float64).reshape(-1, 4, 2)
    lanes = _cat([_segments(m, d) for m, d in zip(road.markings, dashes, strict=True)], (2, 2))
    return _MapGeometry(
        camera=_Ground.build([sidewalks, drivable, _cat(white, (4, 2)), _cat(yellow, (4, 2))]),
        bev=_Ground.build([drivable, crosswalks]),
        lanes=lanes,
        lane_mid=lanes.mean(axis=1),
    )


_GEOMETRY: dict[int, _MapGeometry] = {}
# Cut geometry depends on the map, the code (this file, the marking kinds) and NumPy: a change makes a new cache key.
_GEOMETRY_CODE = hashlib.sha1(
    Path(__file__).read_bytes() + Path(_state.__file__).read_bytes() + np.__version__.encode()
).hexdigest()


def _geometry(road: RoadMap) -> _MapGeometry:
    """Cached per RoadMap object; the entry is dropped when the map is collected, so a reused id() cannot alias.

    Maps read from a network file (they have a name) are also cached on disk next to the networks: cutting a city
    takes about a second and every worker process would otherwise repeat it for every layout it meets."""
    key = id(road)
    if key not in _GEOMETRY:
        _GEOMETRY[key] = _stored_geometry(road) if road.name else _build_geometry(road)
        weakref.finalize(road, _GEOMETRY.pop, key, None)
    return _GEOMETRY[key]


def _stored_geometry(road: RoadMap) -> _MapGeometry:
    """`_build_geometry(road)` through a file keyed by the road's arrays and `_GEOMETRY_CODE`; written atomically, and
    arrays round-trip exactly, so a loaded geometry draws the same pixels as a fresh one."""
    h = hashlib.sha1(_GEOMETRY_CODE.encode())
    for a in [*road.drivable, *road.sidewalks, *road.crosswalks, *road.markings, road.marking_kind, road.stop_lines]:
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    for part in (road.drivable, road.sidewalks, road.crosswalks, road.markings):
        h.update(str(len(part)).encode())
    try:
        path = cache_dir() / f"geometry_{h.hexdigest()[:20]}.npz"
    except OSError:  # no cache folder to be had: build every time, as without a disk cache
        return _build_geometry(road)
    names = [f.name for f in fields(_Ground)]
    if path.exists():
        with np.load(path) as z:
            grounds = [_Ground(*(z[f"{g}_{n}"] for n in names)) for g in ("camera", "bev")]
            return _MapGeometry(*grounds, z["lanes"], z["lane_mid"])
    geo = _build_geometry(road)
    arrays = {f"{g}_{n}": getattr(getattr(geo, g), n) for g in ("camera", "bev") for n in names}
    partial = None
    try:  # a cache that cannot be written (read-only or full disk) costs only the rebuild next time
        fd, partial = tempfile.mkstemp(dir=path.parent, suffix=".partial.npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, lanes=geo.lanes, lane_mid=geo.lane_mid)
        os.replace(partial, path)
    except OSError:
        if partial is not None:
            Path(partial).unlink(missing_ok=True)
    return geo


# ----------------------------------------------------------------------------------------------- 3D objects


def _pad(pts: np.ndarray, k: int) -> np.ndarray:
    """(N, J, D) -> (N, k, D) by repeating the last vertex; a repeated vertex adds nothing to a filled polygon."""
    return np.concatenate([pts, np.repeat(pts[:, -1:], k - pts.shape[1], axis=1)], axis=1)


class _Rows:
    """Mixin for dataclasses of arrays that share their first axis: one row per face, part or plate."""

    @classmethod
    def cat(cls, items: list[Self]) -> Self:
        return cls(*(np.concatenate([getattr(i, f.name) for i in items]) for f in fields(cls)))

    def take(self, idx: np.ndarray) -> Self:
        return type(self)(*(getattr(self, f.name)[idx] for f in fields(self)))


@dataclass
class _Faces(_Rows):
    """Flat-shaded convex faces in the world frame, with what the painter's sort needs."""

    pts: np.ndarray  # (F, MAX_VERTS, 3)
    normal: np.ndarray  # (F, 3) outward unit normal
    colour: np.ndarray  # (F, 3) RGB, already shaded
    obj_xy: np.ndarray  # (F, 2) centre of the object the face belongs to: objects are drawn far to near
    part_xy: np.ndarray  # (F, 2) centre of its part, to order side-by-side parts (a truck's cab and box, legs)
    seq: np.ndarray  # (F,) order within an object: stacked parts bottom-up, decals after what they sit on
    min_cos: np.ndarray  # (F,) drawn only if cos(angle between normal and view ray) exceeds this


@dataclass
class _Boxes(_Rows):
    """Upright boxes, one row per part of an object (a car's body and cabin, a pedestrian's legs, torso, head)."""

    xy: np.ndarray  # (R, 2) centre of the object
    yaw: np.ndarray  # (R,) heading of the object
    box: np.ndarray  # (R, 4) forward and left offset of the part from xy, its length and width
    z: np.ndarray  # (R, 2) bottom, top
    colours: np.ndarray  # (R, 5, 3) faces left, rear, right, front, top
    seq: np.ndarray  # (R,)

    @classmethod
    def of(
        cls, xy: np.ndarray, yaw: np.ndarray, box: ArrayLike, z: ArrayLike, colours: ArrayLike, seq: ArrayLike
    ) -> Self:
        """From objects xy (N, 2), yaw (N,) and per-part arrays broadcastable to (N, P, ...)."""
        n, p = len(xy), np.shape(box)[-2]
        return cls(
            np.repeat(xy, p, axis=0),
            np.repeat(yaw, p),
            np.broadcast_to(box, (n, p, 4)).reshape(-1, 4),
            np.broadcast_to(z, (n, p, 2)).reshape(-1, 2),
            np.broadcast_to(colours, (n, p, 5, 3)).reshape(-1, 5, 3),
            np.broadcast_to(seq, (n, p)).reshape(-1),
        )

    def faces(self) -> _Faces:
        """5 Lambert-shaded faces per box (no bottom), from the unit-box template."""
        r = len(self.xy)
        b, z = self.box[:, :, None, None], self.z[:, :, None, None]  # (R, 4 | 2, 1, 1)
        lx = b[:, 0] + _UNIT_FACES[..., 0] * b[:, 2] / 2  # (R, 5, MAX_VERTS), part frame: x forward, y left
        ly = b[:, 1] + _UNIT_FACES[..., 1] * b[:, 3] / 2
        c, s = np.cos(self.yaw)[:, None, None], np.sin(self.yaw)[:, None, None]
        x, y = self.xy[:, 0, None, None] + c * lx - s * ly, self.xy[:, 1, None, None] + s * lx + c * ly
        pts = np.stack([x, y, z[:, 0] + _UNIT_FACES[..., 2] * (z[:, 1] - z[:, 0])], axis=-1)  # (R, 5, MAX_VERTS, 3)
        n = _UNIT_NORMALS  # (5, 3)
        normal = np.stack([c[..., 0] * n[:, 0] - s[..., 0] * n[:, 1], s[..., 0] * n[:, 0] + c[..., 0] * n[:, 1]], -1)
        normal = np.concatenate([normal, np.broadcast_to(n[:, 2:], (r, 5, 1))], axis=-1).reshape(-1, 3)
        shade = 0.62 + 0.38 * np.clip(normal @ SUN, 0.0, None)
        part_xy = np.stack([x[:, 4].mean(axis=1), y[:, 4].mean(axis=1)], axis=1)  # centre of the top face
        return _Faces(
            pts=pts.reshape(r * 5, MAX_VERTS, 3),
            normal=normal,
            colour=self.colours.reshape(-1, 3) * shade[:, None],
            obj_xy=np.repeat(self.xy, 5, axis=0),
            part_xy=np.repeat(part_xy, 5, axis=0),
            seq=np.repeat(self.seq, 5),
            min_cos=np.zeros(r * 5),
        )


@dataclass
class _Plates(_Rows):
    """Flat upright plates (lamps, sign faces), one row per layer; unshaded so their colours stay true."""

    xy: np.ndarray  # (R, 2) centre of the object
    yaw: np.ndarray  # (R,) direction the object faces
    z: np.ndarray  # (R,) height of the plate's centre
    shape: np.ndarray  # (R, MAX_VERTS, 2) outline in (across, up) metres
    colour: np.ndarray  # (R, 3)
    layer: np.ndarray  # (R, 3) distance in front of xy; +1 facing along yaw, -1 away (a plate's back); seq
    min_cos: np.ndarray  # (R,)

    @classmethod
    def of(
        cls,
        xy: np.ndarray,
        yaw: np.ndarray,
        z: ArrayLike,
        shape: ArrayLike,
        colour: ArrayLike,
        layer: np.ndarray,
        min_cos: float = 0.0,
    ) -> Self:
        """From objects xy (N, 2), yaw (N,), per-layer arrays broadcastable to (N, L, ...) and layer (L, 3)."""
        n, lay = len(xy), len(layer)
        return cls(
            np.repeat(xy, lay, axis=0),
            np.repeat(yaw, lay),
            np.broadcast_to(z, (n, lay)).reshape(-1),
            np.broadcast_to(shape, (n, lay, MAX_VERTS, 2)).reshape(-1, MAX_VERTS, 2),
            np.broadcast_to(colour, (n, lay, 3)).reshape(-1, 3).astype(np.float64),
            np.tile(layer, (n, 1)),
            np.full(n * lay, min_cos),
        )

    def faces(self) -> _Faces:
        f = np.stack([np.cos(self.yaw), np.sin(self.yaw)], axis=1)  # (R, 2)
        facing = f * self.layer[:, 1:2]
        across = np.stack([-facing[:, 1], facing[:, 0]], axis=1)
        ground = self.xy[:, None] + self.layer[:, None, :1] * f[:, None] + self.shape[..., :1] * across[:, None]
        pts = np.concatenate([ground, self.z[:, None, None] + self.shape[..., 1:]], axis=2)  # (R, MAX_VERTS, 3)
        normal = np.concatenate([facing, np.zeros((len(f), 1))], axis=1)
        seq = self.layer[:, 2].astype(np.int64)
        return _Faces(pts, normal, self.colour, self.xy, self.xy, seq, self.min_cos)


def _side_colours(
    side: ArrayLike, rear: ArrayLike | None = None, front: ArrayLike | None = None, top: ArrayLike | None = None
) -> np.ndarray:
    """(..., 5, 3) face colours in part order left, rear, right, front, top; unset faces take `side`."""
    faces = [side, side if rear is None else rear, side, side if front is None else front, side if top is None else top]
    return np.stack(np.broadcast_arrays(*(np.asarray(f, np.float64) for f in faces)), axis=-2)


def _ngon(n: int, radius: float, phase: float = 0.0) -> np.ndarray:
    """Regular polygon (MAX_VERTS, 2), padded."""
    a = phase + 2 * np.pi * np.arange(n) / n
    return _pad(radius * np.stack([np.cos(a), np.sin(a)], axis=1)[None], MAX_VERTS)[0]


# A unit box's faces as (x, y, z) multipliers: x, y in half-lengths from the part centre, z 0 at the bottom, 1 at the
# top; faces in part order left, rear, right, front, top, each corner ring padded to MAX_VERTS.
_UNIT_FACES = _pad(
    np.array(
        [
            [[1, 1, 0], [-1, 1, 0], [-1, 1, 1], [1, 1, 1]],
            [[-1, 1, 0], [-1, -1, 0], [-1, -1, 1], [-1, 1, 1]],
            [[-1, -1, 0], [1, -1, 0], [1, -1, 1], [-1, -1, 1]],
            [[1, -1, 0], [1, 1, 0], [1, 1, 1], [1, -1, 1]],
            [[1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, 1]],
        ],
        np.float64,
    ),
    MAX_VERTS,
)  # (5, MAX_VERTS, 3)
_UNIT_NORMALS = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def _car_colours(paint: tuple[int, int, int]) -> np.ndarray:
    """(2, 5, 3): a body with tail lights at the rear, then a glass cabin with a painted roof."""
    tail = 0.55 * np.array(paint) + 0.45 * np.array(TAIL_RGB)
    return np.stack([_side_colours(paint, rear=tail), _side_colours(GLASS_RGB, top=paint)])


# Tables indexed by kind. Vehicle parts as multiples of the box's (length, width, length, width): forward offset,
# left offset, length, width; car = body + cabin set back, truck = cab in front + cargo box, so heading reads.
assert (CAR, TRUCK, PARKED) == (0, 1, 2) and (STOP_SIGN, YIELD_SIGN, SPEED_SIGN) == (0, 1, 2)
_CAR_BOX = [[0.0, 0.0, 1.0, 1.0], [-0.1, 0.0, 0.55, 0.9]]
_VEHICLE_BOX = np.array([_CAR_BOX, [[0.39, 0.0, 0.22, 1.0], [-0.11, 0.0, 0.76, 1.0]], _CAR_BOX])  # (3, 2, 4)
_VEHICLE_Z = np.array([[[0.0, 0.9], [0.9, 1.5]], [[0.0, 2.6], [0.0, 3.0]], [[0.0, 0.9], [0.9, 1.5]]])
_VEHICLE_SEQ = np.array([[0, 1], [0, 0], [0, 1]])
_VEHICLE_RGB = np.stack(
    [
        _car_colours(CAR_RGB),
        np.stack([_side_colours(TRUCK_CAB_RGB, front=GLASS_RGB), _side_colours(TRUCK_BOX_RGB)]),
        _car_colours(PARKED_RGB),
    ]
)  # (3, 2, 5, 3)

# Pedestrian parts: left leg, right leg, torso, head.
_PED_BOX = np.array([[0.0, 0.12, 0.2, 0.18], [0.0, -0.12, 0.2, 0.18], [0.0, 0.0, 0.3, 0.5], [0.0, 0.0, 0.24, 0.22]])
_PED_Z = np.array([[0.0, 0.85], [0.0, 0.85], [0.85, 1.45], [1.45, 1.75]])
_PED_SEQ = np.array([0, 0, 1, 2])
_PED_RGB = np.stack(
    [
        [_side_colours(TROUSERS_RGB)] * 2
        + [_side_colours(shirt, front=0.6 * np.array(shirt) + 0.4 * 255)]
        + [_side_colours(SKIN_RGB, rear=HAIR_RGB, top=HAIR_RGB)]
        for shirt in SHIRTS
    ]
)  # (len(SHIRTS), 4, 5, 3)

# Traffic light: pole, then the dark head on top; the lit lamp is a plate just in front of the head.
_LIGHT_BOX = np.array([[0.0, 0.0, 0.18, 0.18], [0.0, 0.0, HEAD_DEPTH, HEAD_WIDTH]])
_LIGHT_Z = np.array([[0.0, POLE_TOP], [POLE_TOP, HEAD_TOP]])
_LIGHT_RGB = np.stack([_side_colours(POLE_RGB), _side_colours(HOUSING_RGB)])
_LAMP_LAYER = np.array([[HEAD_DEPTH / 2 + 0.02, 1.0, 2.0]])

# Sign plates: a grey back, then two front layers whose shape and colours say the kind.
_SIGN_LAYER = np.array([[0.05, -1.0, 1.0], [0.05, 1.0, 2.0], [0.05, 1.0, 3.0]])
_SIGN_SHAPES = np.array(
    [
        [_ngon(8, 0.42, np.pi / 8), _ngon(8, 0.42, np.pi / 8), _ngon(8, 0.37, np.pi / 8)],
        [_ngon(3, 0.48, -np.pi / 2), _ngon(3, 0.48, -np.pi / 2), _ngon(3, 0.27, -np.pi / 2)],
        [_ngon(12, 0.4), _ngon(12, 0.4), _ngon(12, 0.3)],
    ]
)  # (3, 3, MAX_VERTS, 2)
_SIGN_RGB = np.array([[PLATE_BACK_RGB, WHITE_RGB, SIGN_RED], [PLATE_BACK_RGB, SIGN_RED, WHITE_RGB]])[[0, 1, 1]]


def _vehicles(veh: np.ndarray, kind: np.ndarray) -> _Boxes:
    k = kind.astype(np.int64)
    box = _VEHICLE_BOX[k] * veh[:, None, [4, 5, 4, 5]]  # (N, 2, 4)
    return _Boxes.of(veh[:, :2], veh[:, 2], box, _VEHICLE_Z[k], _VEHICLE_RGB[k], _VEHICLE_SEQ[k])


def _pedestrians(ped: np.ndarray, ids: list[str]) -> _Boxes:
    """Legs, torso and head (1.75 m, 0.5 m wide). The front is lighter and the back of the head dark, so the
    heading reads; legs swing with distance walked, so a walker differs from someone standing still."""
    xy, yaw, speed = ped[:, :2], ped[:, 2], ped[:, 3]
    walked = xy[:, 0] * np.cos(yaw) + xy[:, 1] * np.sin(yaw)
    stride = 0.25 * np.clip(speed / 1.4, 0.0, 1.0) * np.sin(3.0 * walked)  # (M,)
    box = np.repeat(_PED_BOX[None], len(ped), axis=0)  # (M, 4, 4)
    box[:, 0, 0], box[:, 1, 0] = stride, -stride
    shirt = np.array([zlib.crc32(i.encode()) % len(SHIRTS) for i in ids], np.int64)  # stable across runs
    return _Boxes.of(xy, yaw, box, _PED_Z, _PED_RGB[shirt], _PED_SEQ)


def _lights(xy: np.ndarray, yaw: np.ndarray, state: np.ndarray) -> tuple[_Boxes, _Plates]:
    """Pole, dark head, and the one lit lamp (red top, yellow middle, green bottom), visible only from the front."""
    s = state.astype(np.int64)
    boxes = _Boxes.of(xy, yaw, _LIGHT_BOX, _LIGHT_Z, _LIGHT_RGB, [0, 1])
    lamp_z, lamp_rgb = np.array(LAMP_Z)[s][:, None], np.array(LAMP_RGB)[s][:, None]
    return boxes, _Plates.of(xy, yaw, lamp_z, _ngon(12, LAMP_RADIUS), lamp_rgb, _LAMP_LAYER, LAMP_MIN_COS)


def _signs(xy: np.ndarray, yaw: np.ndarray, kind: np.ndarray) -> tuple[_Boxes, _Plates]:
    """A thin pole and a plate: red octagon (stop), red-rimmed triangle (yield), red-ringed disc (speed limit)."""
    k = kind.astype(np.int64)
    pole = _Boxes.of(xy, yaw, [[0.0, 0.0, 0.07, 0.07]], [[0.0, PLATE_Z - 0.35]], _side_colours(POLE_RGB)[None], [0])
    return pole, _Plates.of(xy, yaw, PLATE_Z, _SIGN_SHAPES[k], _SIGN_RGB[k], _SIGN_LAYER)


# ----------------------------------------------------------------------------------------------- front camera


@dataclass(frozen=True)
class CameraConfig:
    width: int = 256
    height: int = 128
    hfov_deg: float = 90.0
    mount_height: float = 1.5  # metres above the ground
    mount_forward: float = 0.5  # metres ahead of the ego's box centre (behind the windscreen)
    pitch_deg: float = 4.0  # nose down: a little more road than sky
    near: float = 0.3  # metres; nearer geometry is clipped away
    max_range: float = 80.0  # metres; farther tiles and objects are not drawn


def _clip_near(poly: np.ndarray, near: float) -> tuple[np.ndarray, np.ndarray]:
    """Clip convex camera-frame polygons (N, K, 3) to z >= near, all at once (Sutherland-Hodgman, one plane).

    Clipping before projecting is what keeps geometry that passes behind the camera from folding over the image; the
    side and far limits need no clipping, as cv2 copes with vertices far off-screen. Returns (M, K + 1, 3) polygons
    padded by repeated vertices and the (M,) ascending input rows they come from.
    """
    d = poly[..., 2] - near  # (N, K)
    inside = d >= 0
    whole, cut = inside.all(axis=1), inside.any(axis=1) & ~inside.all(axis=1)
    p, d, inside = poly[cut], d[cut], inside[cut]
    n, k = inside.shape
    nxt = np.r_[1:k, 0]
    crosses = inside != inside[:, nxt]
    t = d / np.where(crosses, d - d[:, nxt], 1.0)
    hit = p + t[..., None] * (p[:, nxt] - p)
    cand = np.stack([p, hit], axis=2).reshape(n, 2 * k, 3)  # each vertex, then where its edge crosses
    keep = np.stack([inside, crosses], axis=2).reshape(n, 2 * k)
    order = np.argsort(~keep, axis=1, kind="stable")  # kept candidates first, in ring order
    slot = np.take_along_axis(order, np.minimum(np.arange(k + 1), keep.sum(axis=1, keepdims=True) - 1), axis=1)
    rows = np.flatnonzero(whole | cut)
    out = np.empty((len(rows), k + 1, 3))
    out[whole[rows]] = _pad(poly[whole], k + 1)
    out[cut[rows]] = np.take_along_axis(cand, slot[..., None], axis=1)  # padded with the last kept vertex
    return out, rows


class FrontCamera:
    """Perspective camera on the ego. `render(state, road)` -> (H, W, 3) uint8 RGB."""

    def __init__(self, config: CameraConfig | None = None) -> None:
        self.config = c = config or CameraConfig()
        self.focal = (c.width / 2) / np.tan(np.radians(c.hfov_deg) / 2)
        self.centre = np.array([(c.width - 1) / 2, (c.height - 1) / 2])
        self.tan_half = np.tan(np.radians(c.hfov_deg) / 2)
        self.background = self._background()

    def _background(self) -> np.ndarray:
        """Sky fading to the horizon, grass below it; the horizon row follows from the pitch."""
        c = self.config
        horizon = self.centre[1] - self.focal * np.tan(np.radians(c.pitch_deg))
        rows = np.arange(c.height, dtype=np.float64)[:, None]
        sky_t = np.clip(rows / max(horizon, 1.0), 0.0, 1.0)
        ground_t = np.clip((rows - horizon) / max(c.height - horizon, 1.0), 0.0, 1.0)
        sky = (1 - sky_t) * np.array(SKY_TOP) + sky_t * np.array(SKY_HORIZON)
        grass = (1 - ground_t) * np.array(GRASS_FAR) + ground_t * np.array(GRASS_NEAR)
        column = np.where(rows < horizon, sky, grass)  # (H, 3)
        return np.ascontiguousarray(np.broadcast_to(column[:, None], (c.height, c.width, 3)).round().astype(np.uint8))

    def _pose(self, ego: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Camera origin (3,) in the world and rotation (3, 3) world -> camera (x right, y down, z forward)."""
        c = self.config
        yaw = float(ego[EGO_YAW])
        cy, sy = np.cos(yaw), np.sin(yaw)
        cp, sp = np.cos(np.radians(c.pitch_deg)), np.sin(np.radians(c.pitch_deg))
        origin = np.array([ego[EGO_X] + c.mount_forward * cy, ego[EGO_Y] + c.mount_forward * sy, c.mount_height])
        rot = np.array([[sy, -cy, 0.0], [-sp * cy, -sp * sy, -cp], [cp * cy, cp * sy, -sp]])
        return origin, rot

    def _in_view(self, xy: np.ndarray, radius: np.ndarray | float, origin: np.ndarray, rot: np.ndarray) -> np.ndarray:
        """(N,) objects whose bounding circle may reach the view wedge within max_range."""
        d = xy - origin[:2]
        fwd = d @ rot[2, :2] / np.hypot(*rot[2, :2])
        lat = d @ rot[0, :2]
        wedge = (np.abs(lat) - fwd * self.tan_half) <= radius * np.hypot(1.0, self.tan_half)
        return (fwd > -radius) & wedge & (np.hypot(d[:, 0], d[:, 1]) < self.config.max_range + radius)

    def _pixels(self, cam: np.ndarray) -> np.ndarray:
        """Camera-frame points (..., 3) with z > 0 -> pixel coordinates in 1 / 2**SHIFT px, int32."""
        uv = cam[..., :2] / cam[..., 2:3] * self.focal + self.centre
        return np.round(uv * (1 << SHIFT)).astype(np.int32)

    def _draw_ground(self, img: np.ndarray, ground: _Ground, origin: np.ndarray, rot: np.ndarray) -> None:
        keep = np.flatnonzero(self._in_view(ground.centre, ground.radius, origin, rot))
        to_cam = np.vstack([rot[:, 0], rot[:, 1], -rot @ origin])  # (3, 3): ground (x, y, 1) -> camera frame
        poly, idx = _clip_near(ground.hom[keep] @ to_cam, self.config.near)
        px, group = self._pixels(poly), ground.group[keep[idx]]
        for start, stop, layer in ground.runs(group):
            cv2.fillPoly(img, px[start:stop], _GROUND_RGB[layer], cv2.LINE_8, SHIFT)

    def _faces(self, state: WorldState, origin: np.ndarray, rot: np.ndarray) -> _Faces:
        """Faces of every object that may be in view."""
        veh, ped = state.vehicles, state.pedestrians
        centres = [veh[:, :2], ped[:, :2], state.light_pos, state.sign_pos]
        radii = [np.hypot(veh[:, 4], veh[:, 5]) / 2, np.full(len(ped), 0.5), np.full(len(state.light_pos), 0.6)]
        radii.append(np.full(len(state.sign_pos), 0.6))
        seen = self._in_view(np.concatenate(centres), np.concatenate(radii), origin, rot)
        v, p, lt, sg = np.split(seen, np.cumsum([len(c) for c in centres])[:-1])
        light_boxes, lamps = _lights(state.light_pos[lt], state.light_yaw[lt], state.light_state[lt])
        sign_boxes, plates = _signs(state.sign_pos[sg], state.sign_yaw[sg], state.sign_kind[sg])
        ped_ids = [i for i, keep in zip(state.pedestrian_ids, p, strict=True) if keep]
        boxes = [_vehicles(veh[v], state.vehicle_kind[v]), _pedestrians(ped[p], ped_ids), light_boxes, sign_boxes]
        return _Faces.cat([_Boxes.cat(boxes).faces(), _Plates.cat([lamps, plates]).faces()])

    def _draw_objects(self, img: np.ndarray, faces: _Faces, origin: np.ndarray, rot: np.ndarray) -> None:
        to_cam = origin - faces.pts[:, 0]  # (F, 3)
        cos = np.einsum("fd,fd->f", faces.normal, to_cam) / np.linalg.norm(to_cam, axis=1)
        f = faces.take(cos > faces.min_cos)  # back faces and lamps seen from the side drop out
        obj_depth = np.linalg.norm(f.obj_xy - origin[:2], axis=1)
        part_depth = np.linalg.norm(f.part_xy - origin[:2], axis=1)
        order = np.lexsort((-part_depth, f.seq, -obj_depth))  # far objects first; within one, by seq then depth
        poly, idx = _clip_near((f.pts[order] - origin) @ rot.T, self.config.near)
        colours = np.round(f.colour[order][idx]).astype(int).tolist()
        for px, rgb in zip(self._pixels(poly), colours, strict=True):
            cv2.fillConvexPoly(img, px, rgb, cv2.LINE_8, SHIFT)

    def render(self, state: WorldState, road: RoadMap) -> np.ndarray:
        """The ego's front view, (H, W, 3) uint8 RGB."""
        origin, rot = self._pose(state.ego)
        img = self.background.copy()
        self._draw_ground(img, _geometry(road).camera, origin, rot)
        self._draw_objects(img, self._faces(state, origin, rot), origin, rot)
        return img


# ----------------------------------------------------------------------------------------------- bird's-eye view


@dataclass(frozen=True)
class BevConfig:
    width: int = 128
    height: int = 128
    metres_per_px: float = 0.5
    ego_row: float = 0.75  # the ego sits this far down the image, facing up


class BevRenderer:
    """Ego-centric semantic raster. `render(state, road)` -> (C, H, W) uint8 in {0, 1}, channels `BEV_CHANNELS`."""

    def __init__(self, config: BevConfig | None = None) -> None:
        self.config = c = config or BevConfig()
        self.ego_pixel = (int(c.ego_row * c.height), c.width // 2)  # (row, col) of the ego's centre
        rows, cols = self.ego_pixel
        self.reach = c.metres_per_px * float(np.hypot(max(rows, c.height - rows), max(cols, c.width - cols)))

    def _pixels(self, world: np.ndarray, ego: np.ndarray) -> np.ndarray:
        """World (..., 2) -> pixel (col, row) in 1 / 2**SHIFT px, int32; forward is up, left is left."""
        e = to_ego_frame(world, ego)
        row, col = self.ego_pixel
        uv = np.stack([col - e[..., 1] / self.config.metres_per_px, row - e[..., 0] / self.config.metres_per_px], -1)
        return np.round(uv * (1 << SHIFT)).astype(np.int32)

    def _draw_static(self, raster: np.ndarray, geo: _MapGeometry, ego: np.ndarray) -> None:
        ground = geo.bev
        keep = np.flatnonzero(ground.near(ego[:2], self.reach))
        px = self._pixels(ground.hom[keep, :, :2], ego)
        for start, stop, layer in ground.runs(ground.group[keep]):
            cv2.fillPoly(raster[_BEV_GROUND_CH[layer]], px[start:stop], 1, cv2.LINE_8, SHIFT)
        near = np.linalg.norm(geo.lane_mid - ego[:2], axis=1) < self.reach + TILE
        segs = self._pixels(geo.lanes[near], ego)
        cv2.polylines(raster[_CH["lanes"]], segs, False, 1, 1, cv2.LINE_8, SHIFT)

    def _draw_dynamic(self, raster: np.ndarray, state: WorldState) -> None:
        ego, mpp = state.ego, self.config.metres_per_px
        # One call per object, with coordinates converted to Python ints once per kind rather than once per object.
        vehicles = raster[_CH["vehicles"]]
        for box in self._pixels(box_corners(state.vehicles), ego):
            cv2.fillConvexPoly(vehicles, box, 1, cv2.LINE_8, SHIFT)
        radius = max(1, round(0.35 / mpp)) << SHIFT
        pedestrians = raster[_CH["pedestrians"]]
        for u, v in self._pixels(state.pedestrians[:, :2], ego).tolist():
            cv2.circle(pedestrians, (u, v), radius, 1, -1, cv2.LINE_8, SHIFT)
        lines = self._pixels(state.light_stop_line, ego).tolist()
        for (a, b), s in zip(lines, state.light_state.tolist(), strict=True):
            cv2.line(raster[_CH["light_green"] + s], tuple(a), tuple(b), 1, 2, cv2.LINE_8, SHIFT)
        if len(state.route) > 1:
            route = self._pixels(state.route, ego)[None]
            cv2.polylines(raster[_CH["route"]], route, False, 1, max(1, round(1.0 / mpp)), cv2.LINE_8, SHIFT)
        ego_box = np.array([[*ego[:3], 0.0, *state.ego_size]])
        cv2.fillConvexPoly(raster[_CH["ego"]], self._pixels(box_corners(ego_box), ego)[0], 1, cv2.LINE_8, SHIFT)

    def render(self, state: WorldState, road: RoadMap) -> np.ndarray:
        """(C, H, W) uint8 raster, 1 where a channel's thing is."""
        c = self.config
        raster = np.zeros((len(BEV_CHANNELS), c.height, c.width), np.uint8)
        self._draw_static(raster, _geometry(road), state.ego)
        self._draw_dynamic(raster, state)
        return raster


def bev_to_rgb(raster: np.ndarray) -> np.ndarray:
    """(C, H, W) raster -> (H, W, 3) uint8 for looking at; later channels in `_BEV_PAINT` cover earlier ones."""
    img = np.full((*raster.shape[1:], 3), 25, np.uint8)
    for name, rgb in _BEV_PAINT.items():
        img[raster[_CH[name]] > 0] = rgb
    return img
