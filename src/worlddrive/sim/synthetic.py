"""A busy hand-built scene for tests, benchmarks and docs, so none of them needs SUMO.

One signalized 4-way junction of 4-lane roads (2 lanes per direction, one arm curving), sidewalks, crosswalks, a side
street with a stop sign, a speed-limit sign, 20 vehicles and 10 pedestrians. The geometry is built from arm
centrelines the way a SUMO network gives it: one polygon per lane, polylines for markings. For `seed % 3 == 0` the
ego (heading north on the south arm) sees a red light about 30 m ahead and a pedestrian at the kerb next to it.
"""

from __future__ import annotations

import numpy as np

from worlddrive.sim.state import (
    CAR,
    CROSS,
    DASHED_WHITE,
    GREEN,
    PARKED,
    RED,
    SOLID_WHITE,
    SOLID_YELLOW,
    SPEED_SIGN,
    STOP_SIGN,
    TRUCK,
    WAIT,
    YELLOW,
    RoadMap,
    WorldState,
    wrap_angle,
)

LANE_W = 3.5
HALF_ROAD = 2 * LANE_W  # main roads: 2 lanes per direction
SIDEWALK = 3.0
ARM_LEN = 150.0
STOP_S = 5.0  # stop lines this far from the junction box; crosswalks lie between
CROSSWALK_S = (1.0, 4.0)
SIDE_S = 60.0  # where the side street leaves the east arm
SIDE_HALF = LANE_W  # side street: 1 lane per direction
SIZES = {CAR: (4.5, 1.8), TRUCK: (10.0, 2.5), PARKED: (4.4, 1.8)}


def _centreline(start: tuple[float, float], heading: float, pieces: list[tuple[float, float]]) -> np.ndarray:
    """Polyline (K, 2) from (length, curvature) pieces, sampled every 2 m."""
    pts, h = [np.array(start, np.float64)], heading
    for length, curvature in pieces:
        n = max(1, int(np.ceil(length / 2.0)))
        for _ in range(n):
            h += curvature * length / n / 2
            pts.append(pts[-1] + length / n * np.array([np.cos(h), np.sin(h)]))
            h += curvature * length / n / 2
    return np.array(pts)


def _arclength(line: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(line, axis=0), axis=1))])


def _offset(line: np.ndarray, lateral: float) -> np.ndarray:
    """Shift a polyline (K, 2) sideways, positive to its left."""
    t = np.gradient(line, axis=0)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return line + lateral * np.stack([-t[:, 1], t[:, 0]], axis=1)


def _cut(line: np.ndarray, s0: float, s1: float) -> np.ndarray:
    """The part of a polyline between arc lengths s0 < s1, (K, 2)."""
    s = _arclength(line)
    keep = (s > s0) & (s < s1)
    ends = [np.array([[np.interp(v, s, line[:, 0]), np.interp(v, s, line[:, 1])]]) for v in (s0, s1)]
    return np.concatenate([ends[0], line[keep], ends[1]])


def _at(line: np.ndarray, s: float, lateral: float = 0.0) -> tuple[np.ndarray, float]:
    """Point at arc length s, shifted left by `lateral`, and the line's heading there."""
    piece = _cut(line, max(s - 0.5, 0.0), s + 0.5)
    d = piece[-1] - piece[0]
    h = float(np.arctan2(d[1], d[0]))
    xy = _offset(_cut(line, s, s + 0.5), lateral)[0]
    return xy, h


def _strip(line: np.ndarray, a: float, b: float) -> np.ndarray:
    """Polygon (2K, 2) between two lateral offsets of a polyline."""
    return np.concatenate([_offset(line, b), _offset(line, a)[::-1]]).astype(np.float32)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)


class _Builder:
    """Collects the pieces of a RoadMap while the arms are laid out."""

    def __init__(self) -> None:
        self.drivable: list[np.ndarray] = [_rect(-HALF_ROAD, -HALF_ROAD, HALF_ROAD, HALF_ROAD)]
        c0, c1 = HALF_ROAD, HALF_ROAD + SIDEWALK
        corners = [(sx, sy) for sx in (-1, 1) for sy in (-1, 1)]
        self.sidewalks: list[np.ndarray] = [_rect(sx * c0, sy * c0, sx * c1, sy * c1) for sx, sy in corners]
        self.crosswalks: list[np.ndarray] = []
        self.markings: list[np.ndarray] = []
        self.kinds: list[int] = []
        self.stop_lines: list[np.ndarray] = []
        self.lanes: dict[str, np.ndarray] = {}

    def mark(self, line: np.ndarray, kind: int) -> None:
        self.markings.append(line.astype(np.float32))
        self.kinds.append(kind)

    def arm(self, name: str, line: np.ndarray, lanes: int, gaps: tuple[float, float] | None = None) -> None:
        """Lanes, sidewalks and markings of one road leaving the junction; `gaps` cuts its right side for a street."""
        half, end = lanes * LANE_W, _arclength(line)[-1]
        right_pieces = [(0.0, end)] if gaps is None else [(0.0, gaps[0]), (gaps[1], end)]
        for k in range(lanes):
            inner, outer = k * LANE_W, (k + 1) * LANE_W
            self.drivable += [_strip(line, inner, outer), _strip(line, -outer, -inner)]
            self.lanes[f"{name}_in_{k}"] = _offset(line, inner + LANE_W / 2)[::-1].astype(np.float32)
            self.lanes[f"{name}_out_{k}"] = _offset(line, -inner - LANE_W / 2).astype(np.float32)
        self.sidewalks.append(_strip(line, half + SIDEWALK, half))
        self.sidewalks += [_strip(_cut(line, s0, s1), -half, -half - SIDEWALK) for s0, s1 in right_pieces]
        self.mark(_cut(line, STOP_S, end), SOLID_YELLOW)
        for k in range(1, lanes):
            self.mark(_offset(_cut(line, STOP_S, end), k * LANE_W), DASHED_WHITE)
            self.mark(_offset(_cut(line, STOP_S, end), -k * LANE_W), DASHED_WHITE)
        if lanes > 1:
            self.mark(_offset(_cut(line, STOP_S, end), half - 0.15), SOLID_WHITE)
            for s0, s1 in right_pieces:
                self.mark(_offset(_cut(line, max(s0, STOP_S), s1), -half + 0.15), SOLID_WHITE)
        self.stop_lines.append(np.stack([_at(line, STOP_S, 0.0)[0], _at(line, STOP_S, half)[0]]).astype(np.float32))

    def crosswalk(self, line: np.ndarray) -> None:
        (s0, s1), h = CROSSWALK_S, HALF_ROAD
        pts = [_at(line, s0, -h)[0], _at(line, s0, h)[0], _at(line, s1, h)[0], _at(line, s1, -h)[0]]
        self.crosswalks.append(np.array(pts, np.float32))

    def road(self, name: str) -> RoadMap:
        return RoadMap(
            drivable=self.drivable,
            sidewalks=self.sidewalks,
            crosswalks=self.crosswalks,
            markings=self.markings,
            marking_kind=np.array(self.kinds, np.int8),
            stop_lines=np.stack(self.stop_lines),
            lane_centers=self.lanes,
            lane_width=dict.fromkeys(self.lanes, LANE_W),
            lane_speed=dict.fromkeys(self.lanes, 50 / 3.6),
            name=name,
        )


def _arms() -> dict[str, np.ndarray]:
    """Centrelines from the junction box outward; the north arm bends left after 40 m, the side street is 1+1 lanes."""
    east = _centreline((HALF_ROAD, 0.0), 0.0, [(ARM_LEN, 0.0)])
    side_start = _at(east, SIDE_S, -HALF_ROAD)[0]
    return {
        "S": _centreline((0.0, -HALF_ROAD), -np.pi / 2, [(ARM_LEN, 0.0)]),
        "N": _centreline((0.0, HALF_ROAD), np.pi / 2, [(40.0, 0.0), (60.0, 1 / 120), (50.0, 0.0)]),
        "E": east,
        "W": _centreline((-HALF_ROAD, 0.0), np.pi, [(ARM_LEN, 0.0)]),
        "X": _centreline(tuple(side_start), -np.pi / 2, [(80.0, 0.0)]),
    }


def _place_vehicles(rng: np.random.Generator, b: _Builder, ego: np.ndarray, n: int) -> list[list[float]]:
    """Rows x, y, yaw, speed, length, width, kind on random lanes, apart from each other and clear of the ego's view."""
    lanes = sorted(b.lanes)
    rows: list[list[float]] = [
        [-2.0, -1.75, 0.0, 7.0, *SIZES[CAR], CAR],  # clearing the junction eastbound
        [3.0, 5.25, np.pi, 6.0, *SIZES[TRUCK], TRUCK],  # and westbound
        [-60.0, 6.0, np.pi, 0.0, *SIZES[PARKED], PARKED],  # by the kerb of the west arm
        [-68.0, 6.0, np.pi, 0.0, *SIZES[PARKED], PARKED],
    ]
    while len(rows) < n:
        lane = lanes[rng.integers(len(lanes))]
        line = b.lanes[lane]
        s = rng.uniform(5.0, _arclength(line)[-1] - 5.0)
        xy, yaw = _at(line, s)
        kind = TRUCK if rng.random() < 0.15 else CAR
        clear = all(np.hypot(xy[0] - r[0], xy[1] - r[1]) > 12.0 for r in rows)
        in_view = lane == "S_in_1" and xy[1] > ego[1] - 10.0
        if clear and not in_view and np.hypot(*(xy - ego[:2])) > 12.0:
            rows.append([xy[0], xy[1], yaw, float(rng.uniform(0.0, 12.0)), *SIZES[kind], kind])
    return rows


def _place_pedestrians(rng: np.random.Generator, arms: dict[str, np.ndarray], n: int) -> list[list[float]]:
    """Rows x, y, yaw, speed, intent: one at the ego's crosswalk facing the road, then walkers, crossers and waiters."""
    rows = [[HALF_ROAD + 2.5, -HALF_ROAD - 1.5, np.pi, 0.3, CROSS]]
    main = ["S", "N", "E", "W"]
    while len(rows) < n:
        line, side = arms[main[rng.integers(4)]], rng.choice([-1.0, 1.0])
        role = rng.integers(3)
        if role == 0:  # crossing on a crosswalk
            xy, h = _at(line, sum(CROSSWALK_S) / 2, side * rng.uniform(-HALF_ROAD, HALF_ROAD))
            rows.append([*xy, h + side * np.pi / 2, 1.4, CROSS])
        elif role == 1:  # waiting at the kerb, facing along the sidewalk
            xy, h = _at(line, rng.uniform(1.0, 4.0), side * (HALF_ROAD + 0.8))
            rows.append([*xy, h + np.pi * rng.integers(2), 0.0, WAIT])
        else:  # walking along the sidewalk
            xy, h = _at(line, rng.uniform(10.0, 80.0), side * (HALF_ROAD + SIDEWALK / 2))
            rows.append([*xy, h + np.pi * rng.integers(2), rng.uniform(1.0, 1.6), WAIT])
    return rows


def synthetic_scene(seed: int = 0) -> tuple[RoadMap, WorldState]:
    """A busy junction scene; same seed, same arrays."""
    rng = np.random.default_rng(seed)
    arms, b = _arms(), _Builder()
    for name in ("S", "N", "W"):
        b.arm(name, arms[name], 2)
    b.arm("E", arms["E"], 2, gaps=(SIDE_S - SIDE_HALF, SIDE_S + SIDE_HALF))
    b.arm("X", arms["X"], 1)
    for name in ("S", "N", "E", "W"):
        b.crosswalk(arms[name])
    road = b.road(f"synthetic-{seed}")

    ns = (RED, GREEN, YELLOW)[seed % 3]
    ew = GREEN if ns == RED else RED
    lights = [(_at(arms[a], STOP_S, HALF_ROAD + 1.0), state) for a, state in zip("SNEW", (ns, ns, ew, ew), strict=True)]
    stop_xy, stop_yaw = _at(arms["X"], STOP_S, SIDE_HALF + 1.0)
    speed_xy, speed_yaw = _at(arms["S"], 20.0, HALF_ROAD + 1.5)

    ego = np.array([HALF_ROAD - LANE_W / 2, -40.0, np.pi / 2, 6.0, -1.5, 0.0, 0.0], np.float32)
    veh = np.array(_place_vehicles(rng, b, ego, 20), np.float32)
    ped = np.array(_place_pedestrians(rng, arms, 10), np.float32)
    ped[:, 2] = wrap_angle(ped[:, 2])
    route = np.concatenate([ego[None, :2], b.lanes["S_in_1"][b.lanes["S_in_1"][:, 1] > ego[1]], b.lanes["N_out_1"]])
    state = WorldState(
        t=0.0,
        ego=ego,
        ego_size=(4.6, 1.9),
        vehicles=veh[:, :6],
        vehicle_kind=veh[:, 6].astype(np.int8),
        vehicle_ids=[f"veh{i}" for i in range(len(veh))],
        pedestrians=ped[:, :4],
        pedestrian_intent=ped[:, 4].astype(np.int8),
        pedestrian_ids=[f"ped{i}" for i in range(len(ped))],
        light_pos=np.array([xy for (xy, _), _ in lights], np.float32),
        light_yaw=np.array([h for (_, h), _ in lights], np.float32),
        light_state=np.array([s for _, s in lights], np.int8),
        light_stop_line=road.stop_lines[[0, 1, 3, 2]],  # arms were laid out S, N, W, E
        sign_pos=np.array([stop_xy, speed_xy], np.float32),
        sign_yaw=np.array([stop_yaw, speed_yaw], np.float32),
        sign_kind=np.array([STOP_SIGN, SPEED_SIGN], np.int8),
        sign_value=np.array([0, 50], np.float32),
        sign_stop_line=np.stack([road.stop_lines[4], np.zeros((2, 2), np.float32)]),
        route=route.astype(np.float32),
        speed_limit=50 / 3.6,
        command="straight",
    )
    return road, state
