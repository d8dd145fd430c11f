"""Closed-loop Drive Score (DESIGN.md "Metrics"), in the spirit of NAVSIM's PDMS / EPDMS.

    DS = NC · DAC · TLC · YC · (5·TTC + 5·EP + 2·C + 2·SL) / 14

`InfractionTracker.update` turns each `WorldState` into per-step flags; `summary` folds an episode into a `DriveScore`.
Simplifications against NAVSIM, chosen so every rule is checkable on a hand-made state:
- NC fault rule (after nuPlan / NAVSIM): a collision with a vehicle is not the ego's fault when the ego stands still
  (< 0.05 m/s) or when a faster vehicle coming from behind touches the rear quarter of the ego; every
  other vehicle collision is at fault (nuPlan also excuses some lateral contacts; we do not), pedestrians always,
  PARKED cars are "static" (NC = 0.5). A contact that lasts several steps is one event.
- DAC: every ego corner must lie in the drivable union, rasterised once per map at 0.2 m (the grid is the tolerance).
- TLC / stop signs: the ego's front-centre motion between two steps must cross the stop line in the traffic direction
  of its light / sign (the lamp and plate face approaching traffic); yellow is allowed.
- YC: a STOP_SIGN line crossed without a stop (< 0.5 m/s) within 5 m before it; a moving ego overlapping a crosswalk
  that holds a pedestrian within 4 m of its centreline; a pedestrian within 1.5 m ahead of the bumper above 1 m/s.
  YIELD_SIGN lines are not scored.
- TTC: constant-velocity roll-out over 0…0.9 s of agents ahead of the ego centre, only while the ego moves; agents
  already touching are left to NC. One violating step makes the episode's TTC 0 (NAVSIM's per-scene binary).
- C: speed and unwrapped yaw differentiated by a 9-sample (0.9 s) quadratic Savitzky–Golay fit, shorter than NAVSIM's
  15 so a short harsh brake still registers; lateral acc = speed · yaw rate, jerk = d|acc|/dt (NAVSIM's magnitude).
- SL: fraction of steps at or below the speed limit + 0.5 m/s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from worlddrive.sim.geometry import PED_SIZE, agent_boxes, projected_overlap, ttc_conflict
from worlddrive.sim.state import (
    EGO_SPEED,
    EGO_X,
    EGO_Y,
    EGO_YAW,
    PARKED,
    RED,
    STOP_SIGN,
    RoadMap,
    WorldState,
    box_corners,
    to_ego_frame,
)

STATIC, AT_FAULT, NOT_AT_FAULT = "static", "at_fault", "not_at_fault"

STOPPED_SPEED = 0.5  # m/s, below this the ego has stopped (stop signs, crosswalks, TTC)
STOPPED_EGO_SPEED = 0.05  # m/s, a standing ego hit by a vehicle is not at fault (nuPlan / NAVSIM)
STOP_SIGN_REACH = 5.0  # m before the line where a stop counts
CROSSWALK_LATERAL = 4.0  # m from the ego centreline within which a pedestrian on the crosswalk must be yielded to
BUMPER_GAP, BUMPER_SPEED = 1.5, 1.0  # m ahead of the bumper, m/s
SPEED_TOLERANCE = 0.5  # m/s
MIN_EXPERT_PROGRESS = 5.0  # m
DRIVABLE_GRID = 0.2  # m per raster cell
SAVGOL_WINDOW = 9  # samples
LON_ACC = (-4.05, 2.40)  # m/s²
MAX_LAT_ACC, MAX_JERK, MAX_YAW_RATE, MAX_YAW_ACC = 4.89, 8.37, 0.95, 1.93
SUB_SCORES = ("nc", "dac", "tlc", "yc", "ttc", "ep", "c", "sl", "ds")


@dataclass
class Collision:
    other_id: str  # vehicle or pedestrian id
    kind: str  # STATIC / AT_FAULT / NOT_AT_FAULT


@dataclass
class StepInfractions:
    t: float
    collisions: list[Collision]  # contacts that began this step
    offroad: bool
    red_light: bool
    stop_sign_violation: bool
    pedestrian_yield_violation: bool
    ttc_violation: bool
    over_speed: bool
    speed: float  # m/s
    accel: float  # m/s², raw speed difference over dt (comfort uses the smoothed history instead)


@dataclass
class DriveScore:
    nc: float
    dac: float
    tlc: float
    yc: float
    ttc: float
    ep: float
    c: float
    sl: float
    ds: float
    collisions_at_fault: int
    collisions_static: int
    collisions_not_at_fault: int
    red_lights: int
    stop_sign_violations: int
    ped_yield_violations: int  # distinct runs of violating steps
    offroad_steps: int
    ttc_steps: int
    over_speed_steps: int
    steps: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def drive_score(nc: float, dac: float, tlc: float, yc: float, ttc: float, ep: float, c: float, sl: float) -> float:
    """DESIGN.md's formula: multipliers gate the weighted mean of the soft sub-scores."""
    return nc * dac * tlc * yc * (5 * ttc + 5 * ep + 2 * c + 2 * sl) / 14


def aggregate(scores: list[DriveScore]) -> dict[str, float | int]:
    """Mean of every sub-score and the total of every count over episodes."""
    if not scores:
        raise ValueError("aggregate() needs at least one episode")
    rows = [s.as_dict() for s in scores]
    out: dict[str, float | int] = {"episodes": len(rows)}
    for key in rows[0]:
        values = [r[key] for r in rows]
        out[key] = float(np.mean(values)) if key in SUB_SCORES else int(sum(values))
    return out


class DrivableMask:
    """The union of the drivable polygons rasterised once, so the per-step off-road test is a table look-up."""

    def __init__(self, polygons: list[np.ndarray], resolution: float = DRIVABLE_GRID):
        pts = np.concatenate(polygons)  # (K, 2)
        self.resolution = resolution
        self.origin = pts.min(0) - resolution
        w, h = np.ceil((pts.max(0) - self.origin) / resolution).astype(int) + 2
        self.mask = np.zeros((h, w), np.uint8)
        for poly in polygons:  # one call each: a single fillPoly would XOR overlapping lanes and junctions
            pix = np.round(((poly - self.origin) / resolution - 0.5) * 16).astype(np.int32)  # 4 fractional bits
            cv2.fillPoly(self.mask, [pix], 1, shift=4)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) world points -> (...) bool; outside the raster is off-road."""
        ij = np.floor((points - self.origin) / self.resolution).astype(int)
        h, w = self.mask.shape
        i, j = ij[..., 0], ij[..., 1]
        inside = (i >= 0) & (i < w) & (j >= 0) & (j < h)
        return inside & (self.mask[np.clip(j, 0, h - 1), np.clip(i, 0, w - 1)] > 0)


class InfractionTracker:
    """Per-step infraction flags for one episode; build one per RoadMap and `reset()` between episodes."""

    def __init__(self, road: RoadMap, dt: float = 0.1):
        self.road = road
        self.dt = dt
        self._drivable = DrivableMask(road.drivable)
        self._crosswalks = np.asarray(road.crosswalks, np.float64).reshape(-1, 4, 2)  # (C, 4, 2)
        self.reset()

    def reset(self) -> None:
        self.steps: list[StepInfractions] = []
        self._speeds: list[float] = []
        self._yaws: list[float] = []
        self._contacts: set[tuple[bool, str]] = set()  # (is_pedestrian, id) touching at the previous step
        self._prev_front: np.ndarray | None = None
        self._stopped_at_sign = np.zeros(0, bool)  # (S,) came to a stop within reach of the sign's line

    def update(self, state: WorldState) -> StepInfractions:
        ego = state.ego.astype(np.float64)
        length, width = state.ego_size
        speed, yaw = float(ego[EGO_SPEED]), float(ego[EGO_YAW])
        front = ego[EGO_X : EGO_Y + 1] + length / 2 * np.array([np.cos(yaw), np.sin(yaw)])
        prev_front = front if self._prev_front is None else self._prev_front
        agents = agent_boxes(state)  # (A, 6)
        overlap, ahead = projected_overlap(ego, state.ego_size, agents)  # (T, A), (A,)
        ego_box = np.array([ego[EGO_X], ego[EGO_Y], yaw, speed, length, width])[None]  # (1, 6)
        corners = box_corners(ego_box)[0]  # (4, 2)
        step = StepInfractions(
            t=state.t,
            collisions=self._new_collisions(state, ego, overlap[0]),
            offroad=not self._drivable.contains(corners).all(),
            red_light=_ran_red_light(state, prev_front, front),
            stop_sign_violation=self._rolled_stop_sign(state, prev_front, front, speed),
            pedestrian_yield_violation=self._failed_to_yield(state, ego, corners),
            ttc_violation=speed > STOPPED_SPEED and ttc_conflict(overlap, ahead),
            over_speed=speed > state.speed_limit + SPEED_TOLERANCE,
            speed=speed,
            accel=(speed - self._speeds[-1]) / self.dt if self._speeds else 0.0,
        )
        self.steps.append(step)
        self._speeds.append(speed)
        self._yaws.append(yaw)
        self._prev_front = front
        return step

    def summary(self, progress_m: float, expert_progress_m: float) -> DriveScore:
        """Fold the episode; progress is metres along the route, the expert's from the same scenario."""
        events = [c.kind for s in self.steps for c in s.collisions]
        n = len(self.steps)
        counts = dict(
            collisions_at_fault=events.count(AT_FAULT),
            collisions_static=events.count(STATIC),
            collisions_not_at_fault=events.count(NOT_AT_FAULT),
            red_lights=sum(s.red_light for s in self.steps),
            stop_sign_violations=sum(s.stop_sign_violation for s in self.steps),
            ped_yield_violations=_rising_edges([s.pedestrian_yield_violation for s in self.steps]),
            offroad_steps=sum(s.offroad for s in self.steps),
            ttc_steps=sum(s.ttc_violation for s in self.steps),
            over_speed_steps=sum(s.over_speed for s in self.steps),
        )
        scores = dict(
            nc=0.0 if counts["collisions_at_fault"] else 0.5 if counts["collisions_static"] else 1.0,
            dac=float(counts["offroad_steps"] == 0),
            tlc=float(counts["red_lights"] == 0),
            yc=float(counts["stop_sign_violations"] == 0 and counts["ped_yield_violations"] == 0),
            ttc=float(counts["ttc_steps"] == 0),
            ep=_progress_ratio(progress_m, expert_progress_m),
            c=float(_is_comfortable(np.array(self._speeds), np.array(self._yaws), self.dt)),
            sl=1.0 - counts["over_speed_steps"] / n if n else 1.0,
        )
        return DriveScore(**scores, ds=drive_score(**scores), **counts, steps=n)

    def _new_collisions(self, state: WorldState, ego: np.ndarray, touching: np.ndarray) -> list[Collision]:
        """Classify contacts that were not already touching at the previous step."""
        n = len(state.vehicles)
        events, contacts = [], set()
        for a in np.flatnonzero(touching):
            is_ped = a >= n
            key = (bool(is_ped), state.pedestrian_ids[a - n] if is_ped else state.vehicle_ids[a])
            contacts.add(key)
            if key in self._contacts:
                continue
            if is_ped:
                kind = AT_FAULT
            elif state.vehicle_kind[a] == PARKED:
                kind = STATIC
            else:
                stopped = ego[EGO_SPEED] < STOPPED_EGO_SPEED  # nuPlan's STOPPED_EGO_COLLISION
                kind = NOT_AT_FAULT if stopped or _rear_ended(ego, state.ego_size, state.vehicles[a]) else AT_FAULT
            events.append(Collision(key[1], kind))
        self._contacts = contacts
        return events

    def _rolled_stop_sign(self, state: WorldState, prev_front: np.ndarray, front: np.ndarray, speed: float) -> bool:
        """Cross a STOP_SIGN line without the remembered stop; a crossing spends the stop for the next approach."""
        is_stop = state.sign_kind == STOP_SIGN  # (S,)
        if self._stopped_at_sign.shape != is_stop.shape:
            self._stopped_at_sign = np.zeros(is_stop.shape, bool)
        crossed = is_stop & _crossed(prev_front, front, state.sign_stop_line, state.sign_yaw)
        violation = crossed & ~self._stopped_at_sign
        self._stopped_at_sign &= ~crossed
        if speed < STOPPED_SPEED:
            self._stopped_at_sign |= is_stop & _just_before(front, state.sign_stop_line, state.sign_yaw)
        return bool(violation.any())

    def _failed_to_yield(self, state: WorldState, ego: np.ndarray, corners: np.ndarray) -> bool:
        """A moving ego on a crosswalk holding a pedestrian near its path, or about to hit one with its bumper."""
        speed = ego[EGO_SPEED]
        if speed <= STOPPED_SPEED:
            return False
        length, width = state.ego_size
        rel = to_ego_frame(state.pedestrians[:, :2].astype(np.float64), ego)  # (M, 2)
        gap = rel[:, 0] - length / 2
        at_bumper = (gap >= 0) & (gap <= BUMPER_GAP) & (np.abs(rel[:, 1]) <= (width + PED_SIZE) / 2)
        if speed > BUMPER_SPEED and at_bumper.any():
            return True
        on_crosswalk = _points_in_convex(state.pedestrians[:, :2], self._crosswalks)  # (C, M)
        near_path = np.abs(rel[:, 1]) <= CROSSWALK_LATERAL  # (M,)
        entered = _convex_overlap(corners, self._crosswalks)  # (C,)
        return bool((entered[:, None] & on_crosswalk & near_path).any())


def _ran_red_light(state: WorldState, prev_front: np.ndarray, front: np.ndarray) -> bool:
    crossed = _crossed(prev_front, front, state.light_stop_line, state.light_yaw)  # (L,)
    return bool((crossed & (state.light_state == RED)).any())


def _rear_ended(ego: np.ndarray, ego_size: tuple[float, float], other: np.ndarray) -> bool:
    """An ego touched in its rear quarter by a vehicle from behind that closes in faster is not at fault, at any
    speed (nuPlan's ACTIVE_REAR_COLLISION)."""
    x, _ = to_ego_frame(other[:2].astype(np.float64), ego)
    closing_speed = other[3] * np.cos(other[2] - ego[EGO_YAW])  # other's speed along the ego heading
    # x < -L/4: the ego-box point nearest the other's centre lies in the rear quarter of the ego
    return bool(x < -ego_size[0] / 4 and closing_speed > ego[EGO_SPEED])


def _cross2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _traffic_direction(facing: np.ndarray) -> np.ndarray:
    """(Q,) yaw a lamp / plate faces -> (Q, 2) unit direction of the traffic it controls, which drives towards it."""
    return -np.stack([np.cos(facing), np.sin(facing)], -1)


def _crossed(p0: np.ndarray, p1: np.ndarray, lines: np.ndarray, facing: np.ndarray) -> np.ndarray:
    """(Q,) True where the motion p0 -> p1 crosses the line (Q, 2, 2) in its traffic direction.

    Half-open: p0 strictly before the line and p1 on or past it, so a front resting on the line counts once.
    """
    a, b = lines[:, 0].astype(np.float64), lines[:, 1].astype(np.float64)  # (Q, 2)
    side0, side1 = _cross2(b - a, p0 - a), _cross2(b - a, p1 - a)
    motion = p1 - p0
    straddles = _cross2(motion, a - p0) * _cross2(motion, b - p0) <= 0
    forward = _traffic_direction(facing) @ motion > 0
    return (side0 != 0) & (np.sign(side1) != np.sign(side0)) & straddles & forward


def _just_before(point: np.ndarray, lines: np.ndarray, facing: np.ndarray) -> np.ndarray:
    """(Q,) True where the point is on the approach side of the line and within STOP_SIGN_REACH of it."""
    a, b = lines[:, 0].astype(np.float64), lines[:, 1].astype(np.float64)  # (Q, 2)
    ab = b - a
    t = np.clip(((point - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-9), 0, 1)
    dist = np.linalg.norm(a + t[:, None] * ab - point, axis=-1)
    approaching = ((a - point) * _traffic_direction(facing)).sum(-1) >= 0
    return approaching & (dist <= STOP_SIGN_REACH)


def _points_in_convex(points: np.ndarray, polys: np.ndarray) -> np.ndarray:
    """(M, 2) points in (C, K, 2) convex polygons of either winding -> (C, M) bool."""
    edges = np.roll(polys, -1, axis=1) - polys  # (C, K, 2)
    rel = points[None, None, :, :] - polys[:, :, None, :]  # (C, K, M, 2)
    side = _cross2(edges[:, :, None, :], rel)  # (C, K, M)
    return (side >= 0).all(1) | (side <= 0).all(1)


def _convex_overlap(poly: np.ndarray, polys: np.ndarray) -> np.ndarray:
    """(K, 2) convex polygon against (C, J, 2) convex polygons -> (C,) bool, separating axes on every edge normal."""
    a = np.broadcast_to(poly, (len(polys), *poly.shape))  # (C, K, 2)
    edges = np.concatenate([np.roll(a, -1, axis=1) - a, np.roll(polys, -1, axis=1) - polys], axis=1)  # (C, K+J, 2)
    normals = np.stack([-edges[..., 1], edges[..., 0]], -1)
    pa = np.einsum("cek,cik->cei", normals, a)  # (C, K+J, K)
    pb = np.einsum("cek,cjk->cej", normals, polys)  # (C, K+J, J)
    apart = (pa.max(-1) < pb.min(-1)) | (pb.max(-1) < pa.min(-1))
    return ~apart.any(-1)


def _rising_edges(flags: list[bool]) -> int:
    """Number of runs of consecutive True: one failure to yield spans several steps."""
    f = np.array(flags, bool)  # (n,)
    return int((f & ~np.r_[False, f[:-1]]).sum())


def _progress_ratio(progress_m: float, expert_progress_m: float) -> float:
    """EP: the ego's progress over the expert's, clipped; a near-static expert leaves nothing to compare against."""
    if expert_progress_m < MIN_EXPERT_PROGRESS:
        return 1.0
    return float(np.clip(progress_m / expert_progress_m, 0.0, 1.0))


def _savgol_derivative(y: np.ndarray, dt: float) -> np.ndarray:
    """dy/dt from a local quadratic least-squares fit (Savitzky–Golay); the end windows' fits cover the edges."""
    n = len(y)
    w = min(SAVGOL_WINDOW, n - 1 + n % 2)  # odd, <= n
    k = w // 2
    offsets = np.arange(-k, k + 1)  # (w,)
    fit = np.linalg.pinv(np.vander(offsets, 3, increasing=True))  # (3, w): window samples -> c0 + c1·s + c2·s²
    coef = sliding_window_view(y, w) @ fit.T  # (n - w + 1, 3), s in samples around each window centre
    d = np.empty(n)
    d[k : n - k] = coef[:, 1]
    d[:k] = coef[0, 1] + 2 * coef[0, 2] * offsets[:k]
    d[n - k :] = coef[-1, 1] + 2 * coef[-1, 2] * offsets[k + 1 :]
    return d / dt


def _is_comfortable(speed: np.ndarray, yaw: np.ndarray, dt: float) -> bool:
    """NAVSIM's comfort thresholds on smoothed derivatives of the ego's speed and heading history."""
    if len(speed) < 3:
        return True
    yaw_rate = _savgol_derivative(np.unwrap(yaw), dt)
    yaw_acc = _savgol_derivative(yaw_rate, dt)
    lon_acc = _savgol_derivative(speed, dt)
    lat_acc = speed * yaw_rate
    jerk = _savgol_derivative(np.hypot(lon_acc, lat_acc), dt)
    return bool(
        (lon_acc >= LON_ACC[0]).all()
        and (lon_acc <= LON_ACC[1]).all()
        and (np.abs(lat_acc) < MAX_LAT_ACC).all()
        and (np.abs(jerk) < MAX_JERK).all()
        and (np.abs(yaw_rate) < MAX_YAW_RATE).all()
        and (np.abs(yaw_acc) < MAX_YAW_ACC).all()
    )
