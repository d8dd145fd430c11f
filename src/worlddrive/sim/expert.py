"""The privileged expert: a rule-aware planner in the spirit of NAVSIM's PDM-Closed.

It sees the true `WorldState`, follows the route centreline by pure pursuit and sets its speed with IDM against the
tightest of: the speed limit and curve speed, a leading vehicle, red lights (and yellow ones it can stop for), stop
signs (stop, wait, then go when clear), pedestrians on or about to enter its path, and vehicles whose forecast (along
their lane, or at constant yaw rate) crosses its path first. A PDM-Closed-style guard then rolls that choice and
harder or softer ones out against the same forecasts and keeps the first whose boxes stay apart. It makes the
demonstrations, the reasoning facts and the progress reference.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, field

import numpy as np
from matplotlib.path import Path as MplPath
from numpy.lib.stride_tricks import sliding_window_view

from worlddrive.sim.geometry import TTC_TIMES, boxes_overlap
from worlddrive.sim.route import RoutePath
from worlddrive.sim.state import (
    CROSS,
    EGO_SPEED,
    EGO_YAW,
    LIGHT_NAMES,
    PARKED,
    RED,
    STOP_REST_REACH,
    STOP_REST_SPEED,
    STOP_SIGN,
    STOP_WAIT_S,
    YELLOW,
    WorldState,
    box_corners,
    to_ego_frame,
    value_eq,
    wrap_angle,
)
from worlddrive.sim.vehicle import N_WAYPOINTS, WAYPOINT_DT, BicycleLimits, pure_pursuit
from worlddrive.sim.world import World

A_MAX, B_COMF, HEADWAY, DELTA = 2.0, 2.5, 1.2, 4
SQRT_AB = np.sqrt(A_MAX * B_COMF)  # IDM's sqrt(a b), once (a NumPy scalar, as it was when computed per obstacle)
MAX_LAT_ACC = 2.2  # m/s^2 in curves: comfortable and inside NAVSIM's comfort bounds
STEER_WINDOW, MIN_BEND_SPEED = 7, 2.0  # path points (3 m) over which the steering a bend needs is averaged; m/s
JERK = 6.0  # m/s^3 limit on planned acceleration changes (NAVSIM bound: 8.37)
PROJECT_STRIDE = 8  # coarse step of the nearest-point search along the route window
START_ACCEL = 2.0  # m/s^2 assumed for a slow car that is pulling away
WAIT_BREAK_S = 4.0  # s at a standstill after which standing cross traffic is assumed to wait for us
STOP_DECEL = 1.6  # m/s^2: start a constant-deceleration stop when this much is needed
PED_MAX_DECEL = 4.0  # m/s^2: the hardest (still comfortable) stop for a pedestrian not yet stepping out
APPROACH_TAU = 0.5  # s: before a stop, the speed follows the STOP_DECEL profile to the line this fast
MAX_TURN_RATE, MAX_TURN = 1.0, 1.3  # rad/s and rad: a turning car's forecast keeps its yaw rate, for one turn at most
LANE_YAW, LANE_TURN_RATE, LANE_LAT = 0.35, 0.2, 8.0  # rad, rad/s, m: a car this parallel to our path keeps its lane
LANE_DRIFT, LANE_DRIFT_RATE = 3.5, 1.0  # m, m/s: how far and fast it may close in on our path (a lane change, ours)
GUARD_DT, GUARD_STEPS = 0.1, 40  # the guard's 4 s roll-out, checked every 2nd step
GUARD_T, GUARD_T_SAMPLES = GUARD_DT * GUARD_STEPS, np.arange(2, GUARD_STEPS + 1, 2) * GUARD_DT  # s, (T,) s
GUARD_ACCELS = (0.0, -1.0, -2.0, -3.0, -4.5, -8.0)  # m/s^2 braking fall-backs, gentlest first
GUARD_MARGIN = (0.5, 0.3)  # m added to the ego's half length and half width in the guard
BESIDE = 0.5  # m: an obstacle whose line is this far behind the ego's front bumper is beside it, the IDM's no more
# The metric's time-to-collision test (constant velocity and heading for 0.9 s, agents ahead, ego above 0.5 m/s),
# checked at the guard's samples of the next TTC_HORIZON s: among collision-free choices no harder than
# TTC_MIN_ACCEL, the guard prefers the first that passes it (PDM-Closed scores its proposals with TTC too).
TTC_HORIZON, TTC_TAU, TTC_MOVING = 2.0, TTC_TIMES[1:], 0.5  # s, (U,) the metric's look-ahead times, m/s
TTC_SAMPLES = round(TTC_HORIZON / (2 * GUARD_DT))  # guard samples (0.2 s apart) checked
TTC_MIN_ACCEL = -3.0  # m/s^2: no harder braking than this for a TTC conflict alone (comfort bound: 4.05)
TTC_MARGIN = 0.2  # m added to the ego's half length and half width in that test
TTC_CHORD = 6  # path points (3 m) either side: the ego's heading is the chord's (the path's polyline corners are not)
RULES = frozenset({"vehicle", "light", "stop_sign", "pedestrian", "crossing_vehicle"})  # the Obstacle kinds
Projection = tuple[np.ndarray, np.ndarray, np.ndarray]  # `Expert._project`: arc length, lateral offset, path heading
LaneTrack = tuple[np.ndarray, ...]  # (N,) each vehicle's `_lane_direction`, arc length, lateral offset, its rate


@dataclass
class Obstacle:
    """A constraint along the path: front bumper must stay `min_gap` behind `s`, which moves at `speed`."""

    s: float
    speed: float
    min_gap: float
    kind: str  # "vehicle", "light", "stop_sign", "pedestrian", "crossing_vehicle"
    ref: int = -1  # index into the state's arrays


@dataclass
class _Points:
    """Every 2nd route point from one parity on (the windows `_project` searches are slices of it), with each point's
    2 * PROJECT_STRIDE + 1 neighbours as strided rows, so that no step has to build them."""

    xy: np.ndarray  # (Q, 2)
    s: np.ndarray  # (Q,)
    yaw: np.ndarray  # (Q,)
    x: np.ndarray  # (Q,)
    y: np.ndarray  # (Q,)
    near_x: np.ndarray  # (Q, 2S+1) x of points q - S ... q + S (zero beyond the ends)
    near_y: np.ndarray  # (Q, 2S+1)

    @classmethod
    def of(cls, route: RoutePath, parity: int) -> _Points:
        xy = np.ascontiguousarray(route.xy[parity::2])
        pad = np.zeros(PROJECT_STRIDE)

        def near(a: np.ndarray) -> np.ndarray:
            return sliding_window_view(np.concatenate([pad, a, pad]), 2 * PROJECT_STRIDE + 1)

        x, y = xy[:, 0].copy(), xy[:, 1].copy()
        return cls(xy, route.s[parity::2], route.yaw[parity::2], x, y, near(x), near(y))


@dataclass(eq=False)
class ExpertOutput:
    accel: float
    steer: float
    trajectory: np.ndarray  # (8, 3) x, y, yaw in the ego frame, 0.5 s apart
    facts: dict = field(default_factory=dict)  # SceneFacts fields, filled from the truth

    __eq__ = value_eq


class Expert:
    """Drives a `World` with privileged access to its route and map (no learning, no noise).

    `obey`: the obstacle kinds it reacts to; all of them for the expert, only "vehicle" for the IDM lane-following
    baseline (which then runs red lights, stop signs and pedestrians over: a lower bound, not a driver).
    """

    def __init__(self, world: World, obey: frozenset[str] = RULES):
        unknown = set(obey) - RULES
        if unknown:
            raise ValueError(f"unknown rules {sorted(unknown)}; known: {sorted(RULES)}")
        self.obey = frozenset(obey)
        self.world = world
        self.route: RoutePath = world.route
        self.limits: BicycleLimits = world.ego.limits
        net = world.net
        self.light_s, self.sign_s = world.light_line_s, world.sign_line_s  # (L,), (S,) arc lengths of stop lines
        self.crosswalk_s = self._crosswalk_intervals(net.road.crosswalks)
        self.crosswalk_lo = np.array([a - 2 for a, _ in self.crosswalk_s])  # (X,) with a 2 m margin
        self.crosswalk_hi = np.array([b + 2 for _, b in self.crosswalk_s])
        self._points = (_Points.of(self.route, 0), _Points.of(self.route, 1))
        self._lateral: dict[tuple[str, int], str] = {}
        self._route_s: list[float] = self.route.s.tolist()  # for bisect in the roll-out
        self.curve_speed = self._curve_speed_profile()
        ends = np.minimum(np.arange(len(self.route.s)) + TTC_CHORD, len(self.route.s) - 1)
        chord = self.route.xy[ends] - self.route.xy[np.maximum(np.arange(len(self.route.s)) - TTC_CHORD, 0)]
        self.heading = np.arctan2(chord[:, 1], chord[:, 0])  # (P,) smoothed path heading
        self.reset()

    def reset(self) -> None:
        self.accel = 0.0
        self._yaw_seen: tuple[float, list[str], np.ndarray] = (0.0, [], np.zeros(0))  # t, ids and yaws of last step
        self.turn_rate = np.zeros(0)  # (N,) rad/s of each vehicle in the last state
        self.stopped_at: dict[int, float] = {}  # stop sign index -> time the ego came to rest there
        self.committed_yellow: set[int] = set()
        self.waiting_since = 0.0  # when the ego last came to a standstill

    # ------------------------------------------------------------------ precomputed along the route

    def _crosswalk_intervals(self, crosswalks: list[np.ndarray]) -> list[tuple[float, float]]:
        out = []
        for poly in crosswalks:
            inside = MplPath(poly).contains_points(self.route.xy)
            if inside.any():
                s = self.route.s[inside]
                out.append((float(s.min()), float(s.max())))
        return out

    def _curve_speed_profile(self) -> np.ndarray:
        """Highest speed at each path point such that curves ahead can be taken within MAX_LAT_ACC, and S-bends
        within the steering rate (or the car leaves the road), braking gently."""
        r = self.route
        v = np.minimum(np.sqrt(MAX_LAT_ACC / np.maximum(np.abs(r.curvature), 1e-4)), r.speed_limit)
        steer = np.arctan(self.limits.wheelbase * r.curvature)
        steer_per_m = np.abs(np.gradient(steer, r.s)) if len(r.s) > 1 else np.zeros(len(r.s))
        steer_per_m = np.convolve(steer_per_m, np.ones(STEER_WINDOW) / STEER_WINDOW, mode="same")
        v = np.minimum(v, np.maximum(self.limits.max_steer_rate / np.maximum(steer_per_m, 1e-6), MIN_BEND_SPEED))
        for i in range(len(v) - 2, -1, -1):  # backward pass: reach the next point's speed at B_COMF
            v[i] = min(v[i], np.sqrt(v[i + 1] ** 2 + 2 * 1.5 * (r.s[i + 1] - r.s[i])))
        return v

    # ------------------------------------------------------------------ acting

    def act(self, state: WorldState, plan: bool = True) -> ExpertOutput:
        """Controls for this step; with `plan`, also the 4 s trajectory it intends (a roll-out that costs about a
        third of the time, so data generation asks for it only where it is stored or drawn)."""
        w = self.world
        v = float(state.ego[EGO_SPEED])
        front = w.ego_s + self.limits.length / 2
        if v > 0.3:
            self.waiting_since = state.t
        self.turn_rate = self._turn_rates(state)
        obstacles, facts, lane = self._obstacles(state, front, v)
        obstacles = [o for o in obstacles if o.kind in self.obey]
        accel = self._idm(v, float(self.curve_speed[w.ego_index]), obstacles, front)
        if "crossing_vehicle" in self.obey:
            # Leaders the IDM holds back for; a corridor car beside the front bumper (cutting in, or sliding over
            # from the next lane) is the guard's like every other vehicle.
            leaders = {o.ref for o in obstacles if o.kind == "vehicle" and o.s - front >= -BESIDE}
            accel = self._guard(state, v, accel, leaders, lane)
        max_delta = JERK * 0.1 if accel > -4.5 else 1.0  # emergencies may exceed the comfort jerk
        self.accel = _clip(accel, self.accel - max_delta, self.accel + max_delta)
        path = to_ego_frame(self.route.xy[w.ego_index : w.ego_index + 160], state.ego)
        steer = pure_pursuit(path, v, self.limits.wheelbase)
        trajectory = self._rollout(state, v, obstacles) if plan else np.zeros((N_WAYPOINTS, 3), np.float32)
        facts["speed_action"] = _speed_action(self.accel, v, obstacles, front)
        return ExpertOutput(self.accel, steer, trajectory, facts)

    def _idm(self, v: float, v0: float, obstacles: list[Obstacle], front: float) -> float:
        """IDM for the free road and moving leaders, a constant-deceleration stop for static obstacles, and never
        harder braking than physics needs (the leader's worst-case stop at 5 m/s^2): smooth yet safe."""
        v0 = max(v0, 0.1)
        acc = A_MAX * (1 - (v / v0) ** DELTA)
        if v > v0:
            acc = max(acc, -B_COMF)
        for ob in obstacles:
            gap = ob.s - front - ob.min_gap
            if ob.s - front < -BESIDE:
                continue
            stop_at = gap + (ob.speed**2 / (2 * 5.0) if ob.speed > 0.5 else 0.0)
            need = v * v / (2 * max(stop_at, 0.05)) if v > 0.05 else 0.0  # constant decel that stops in time
            if ob.speed <= 0.5:
                # Follow the STOP_DECEL profile to the line before it binds: no late jerk-limited ramp to make up.
                v_ok = math.sqrt(2 * STOP_DECEL * max(gap, 0.0))
                term = -need if (need > STOP_DECEL or gap < 1.0) else min(A_MAX, (v_ok - v) / APPROACH_TAU)
                if gap < 0.3:
                    term = -max(need, v / 0.3)
            else:
                dv = v - ob.speed
                s_star = ob.min_gap + max(0.0, v * HEADWAY + v * dv / (2 * SQRT_AB))
                idm = A_MAX * (1 - (v / v0) ** DELTA - (s_star / max(ob.s - front, 0.1)) ** 2)
                term = max(idm, -max(need, 2.0))
            acc = min(acc, term)
        if v < 0.3 and acc < 0:
            acc = min(acc, -v / 0.1)  # come to a real stop instead of creeping over the line
        lo = -self.limits.max_brake
        if type(acc) is float and type(lo) is float:
            return _clip(acc, lo, A_MAX)
        return float(np.clip(acc, lo, A_MAX))  # a float32 term made acc a float32: np.clip rounds the bounds to it

    def _turn_rates(self, state: WorldState) -> np.ndarray:
        """(N,) yaw rate of each vehicle since the last step (0 when unseen), so forecasts follow curves and turns."""
        t0, ids0, yaw0 = self._yaw_seen
        yaw = state.vehicles[:, 2].astype(np.float64)
        ids = state.vehicle_ids
        self._yaw_seen = (state.t, ids, yaw)
        dt = state.t - t0
        if not (0 < dt <= 0.5) or not ids0:
            return np.zeros(len(ids))
        if ids == ids0:  # the usual case: the same vehicles in the same order
            prev = yaw0
        else:
            seen = dict(zip(ids0, yaw0.tolist(), strict=True))
            prev = np.array([seen.get(i, np.nan) for i in ids], np.float64)
        rate = np.nan_to_num(wrap_angle(yaw - prev) / dt)
        return np.clip(rate, -MAX_TURN_RATE, MAX_TURN_RATE)

    def _lane_direction(self, state: WorldState, lat: np.ndarray, path_yaw: np.ndarray) -> np.ndarray:
        """(N,) +1 / -1 for vehicles driving along / against our path near it without turning (they keep their
        lane: a straight-line forecast would take them across it on every curve), else 0."""
        rel = np.cos(state.vehicles[:, 2] - path_yaw)
        steady = (np.abs(lat) < LANE_LAT) & (np.abs(self.turn_rate) < LANE_TURN_RATE)
        return np.where(steady & (rel > np.cos(LANE_YAW)), 1, np.where(steady & (rel < -np.cos(LANE_YAW)), -1, 0))

    def _guard(self, state: WorldState, v: float, accel: float, leaders: set[int], lane: LaneTrack) -> float:
        """PDM-Closed's check, for the first action only: roll the ego along the route for 4 s under the rules'
        acceleration, gentler-to-harder braking and pulling away (jerk-limited), the other vehicles at constant speed
        along their lane (`lane`: direction, arc length, lateral offset and its rate) or at constant yaw rate, and
        take the first choice whose boxes never meet while the ego moves (a standing ego is not at fault). If every
        choice meets someone, the one that meets latest, braking hardest among equals. Leaders in the corridor are
        the IDM's; faster cars closing on the ego's rear are theirs to avoid."""
        if v <= 0.05 and accel <= 0 and self.accel <= 0:
            return accel  # it stays standing, and no fall-back moves
        veh = state.vehicles
        ego = state.ego.astype(np.float64)
        rel = to_ego_frame(veh[:, :2].astype(np.float64), ego)  # (N, 2)
        along = veh[:, 3] * np.cos(veh[:, 2] - ego[EGO_YAW])
        follower = (rel[:, 0] < -self.limits.length / 4) & (np.abs(rel[:, 1]) < 2.0) & (along > v)
        v_max = max(v, float(self.curve_speed[self.world.ego_index]))
        # Out of reach in 4 s: each side's travel, the lane forecast's slack, the ego's offset and both boxes.
        reach = (v_max + veh[:, 3]) * GUARD_T + abs(self.world.ego_lateral) + LANE_DRIFT + 2 * LANE_LAT + 10.0
        dist = np.hypot(rel[:, 0], rel[:, 1])
        keep = (dist < np.minimum(reach, 60.0)) & ~follower & (state.vehicle_kind != PARKED)
        if leaders:
            keep[list(leaders)] = False
        idx = np.nonzero(keep)[0]
        if not len(idx):
            return accel
        others = self._forecast(veh[idx].astype(np.float64), self.turn_rate[idx], tuple(x[idx] for x in lane))
        # After WAIT_BREAK_S at a standstill the TTC preference yields: someone has to go.
        check_ttc = state.t - self.waiting_since < WAIT_BREAK_S
        first, ttc = self._first_meet(np.array([accel]), v, v_max, others, check_ttc)
        if first[0] == GUARD_STEPS // 2 and not ttc[0]:
            return accel
        # The rules' choice, gentler-to-harder braking, then (a car closing in from the side) pulling away.
        targets = np.array([accel, *[a for a in GUARD_ACCELS if a < accel], *([A_MAX] if accel < A_MAX else [])])
        first2, ttc2 = self._first_meet(targets[1:], v, v_max, others, check_ttc)
        first, ttc = np.concatenate([first, first2]), np.concatenate([ttc, ttc2])
        clear = first == GUARD_STEPS // 2
        calm = np.nonzero(clear & ~ttc & ((targets >= TTC_MIN_ACCEL) | (targets >= accel)))[0]
        if len(calm):
            return float(targets[calm[0]])
        clear = np.nonzero(clear)[0]
        if len(clear):
            return float(targets[clear[0]])
        return float(targets[first == first.max()].min())

    def _forecast(self, a: np.ndarray, turn_rate: np.ndarray, lane: LaneTrack) -> tuple[np.ndarray, ...]:
        """Centre x, y and yaw (A, T) every 0.2 s for 4 s of vehicles `a` (A, 6) at constant speed along their lane
        (parallel to our path) or at constant yaw rate (the turn capped at MAX_TURN); half lengths and widths (A,)."""
        t = GUARD_T_SAMPLES
        ax, ay, ayaw = _turning_path(a, turn_rate, t - 0.1, a[:, 3:4] * 0.2)
        direction, ls, llat, lrate = lane
        par = np.nonzero(direction)[0]
        if len(par):
            off = llat[par, None] + np.clip(lrate[par, None] * t[None], -LANE_DRIFT, LANE_DRIFT)  # (P, T)
            k = self._route_index(ls[par, None] + direction[par, None] * a[par, 3:4] * t[None])
            ax[par], ay[par], pyaw = self._route_pose(k, off)
            ayaw[par] = pyaw + np.where(direction[par, None] > 0, 0.0, np.pi)
        return ax, ay, ayaw, a[:, 4] / 2, a[:, 5] / 2, a[:, 3]

    def _route_index(self, s: np.ndarray) -> np.ndarray:
        """Index of the route point at (or just past) arc lengths `s`, clamped to its end."""
        return np.minimum(np.searchsorted(self.route.s, s), len(self.route.s) - 1)

    def _route_pose(self, k: np.ndarray, offset: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x, y and heading of the route at path indices `k` (`_route_index`), `offset` metres to its left."""
        yaw = self.route.yaw[k]
        return self.route.xy[k, 0] - np.sin(yaw) * offset, self.route.xy[k, 1] + np.cos(yaw) * offset, yaw

    def _first_meet(
        self, targets: np.ndarray, v: float, v_max: float, others: tuple[np.ndarray, ...], check_ttc: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(K,) index of the first 0.2 s sample at which the ego, jerk-limited toward each target acceleration along
        the route (speed within [0, v_max]), meets a `_forecast` box while moving; GUARD_STEPS // 2 for never. And
        (K,) whether, with `check_ttc`, the metric's time-to-collision test fails at a sample within TTC_HORIZON."""
        steps = np.arange(1, GUARD_STEPS + 1)  # (S,)
        rate = np.where(targets < -4.5, 1.0, JERK * GUARD_DT)  # per step, as `act` limits it
        delta = targets - self.accel
        acc = self.accel + np.sign(delta)[:, None] * np.minimum(np.abs(delta)[:, None], rate[:, None] * steps)
        speed = np.clip(v + np.cumsum(acc * GUARD_DT, axis=1), 0.0, v_max)  # (K, S)
        s = self.world.ego_s + np.cumsum(speed * GUARD_DT, axis=1)
        speed, s = speed[:, 1::2], s[:, 1::2]  # (K, T) every 0.2 s
        shift = self.world.ego_lateral * np.maximum(1 - GUARD_T_SAMPLES / 2.0, 0.0)  # what pure pursuit takes out
        k = self._route_index(s)
        ex, ey, eyaw = self._route_pose(k, shift)
        # Boxes meet: a cheap circle test first, then separating axes on the close pairs.
        ax, ay, ayaw, ahl, ahw, aspeed = others
        ehl, ehw = self.limits.length / 2 + GUARD_MARGIN[0], self.limits.width / 2 + GUARD_MARGIN[1]
        dx, dy = ax.T[None] - ex[..., None], ay.T[None] - ey[..., None]  # (K, T, A)
        ttc = (
            self._ttc_conflict(dx, dy, self.heading[k], speed, ayaw, ahl, ahw, aspeed)
            if check_ttc
            else np.zeros(len(s), bool)
        )
        reach = np.hypot(ehl, ehw) + np.hypot(ahl, ahw)
        close = (dx * dx + dy * dy < reach * reach) & (speed[..., None] > 0.05)
        hit = np.zeros(close.shape, bool)
        if close.any():
            kk, tt, aa = np.nonzero(close)
            c, sn, cx, cy = np.cos(eyaw[kk, tt]), np.sin(eyaw[kk, tt]), dx[close], dy[close]
            rel = np.stack([cx * c + cy * sn, cy * c - cx * sn], -1)  # (P, 2) in each ego pose's frame
            half = np.stack([ahl[aa], ahw[aa]], -1)  # (P, 2)
            hit[kk, tt, aa] = boxes_overlap(rel, ayaw[aa, tt] - eyaw[kk, tt], np.array([ehl, ehw]), half)
        hit_t = hit.any(2)  # (K, T)
        return np.where(hit_t.any(1), hit_t.argmax(1), GUARD_STEPS // 2), ttc

    def _ttc_conflict(
        self,
        dx: np.ndarray,
        dy: np.ndarray,
        eyaw: np.ndarray,
        speed: np.ndarray,
        ayaw: np.ndarray,
        ahl: np.ndarray,
        ahw: np.ndarray,
        aspeed: np.ndarray,
    ) -> np.ndarray:
        """(K,) the metric's TTC test (`geometry.ttc_conflict`) at the first TTC_SAMPLES roll-out samples: ego and
        forecast boxes (`dx`, `dy` (K, T, A) offsets) carried on at constant velocity and heading for 0.9 s, agents
        whose centre is ahead of the ego's and that do not touch it now, the ego moving above TTC_MOVING."""
        h = TTC_SAMPLES
        dx, dy, speed = dx[:, :h], dy[:, :h], speed[:, :h, None]
        # Only pairs that can come within reach in 0.9 s: first a bound without trigonometry (the relative speed is
        # at most the sum of both speeds), then, for the agents that pass it, the relative velocity.
        reach = np.hypot(self.limits.length / 2, self.limits.width / 2) + 2 * TTC_MARGIN + np.hypot(ahl, ahw)  # (A,)
        bound = reach + TTC_TAU[-1] * (aspeed + speed)  # (K, h, A)
        maybe = (dx * dx + dy * dy < bound * bound) & (speed > TTC_MOVING)
        if not maybe.any():
            return np.zeros(len(dx), bool)
        cols = np.nonzero(maybe.any((0, 1)))[0]
        dx, dy, speed_a, reach = dx[..., cols], dy[..., cols], aspeed[cols], reach[cols]
        ayaw, ahl, ahw = ayaw[cols], ahl[cols], ahw[cols]
        eyaw = eyaw[:, :h, None]
        c, sn = np.cos(eyaw), np.sin(eyaw)
        rx, ry = dx * c + dy * sn, dy * c - dx * sn  # (K, h, A') in each ego pose's frame
        dyaw = ayaw.T[None, :h] - eyaw  # (K, h, A')
        vx, vy = speed_a * np.cos(dyaw) - speed, speed_a * np.sin(dyaw)  # relative velocity
        near = (rx > 0) & (speed > TTC_MOVING) & (np.hypot(rx, ry) < reach + TTC_TAU[-1] * np.hypot(vx, vy))
        if not near.any():
            return np.zeros(len(dx), bool)
        kk, tt, aa = np.nonzero(near)
        ego_half = np.array([self.limits.length / 2, self.limits.width / 2]) + TTC_MARGIN
        half = np.stack([ahl[aa], ahw[aa]], -1)  # (P, 2)
        rel = np.stack([rx[kk, tt, aa], ry[kk, tt, aa]], -1)  # (P, 2)
        rv = np.stack([vx[kk, tt, aa], vy[kk, tt, aa]], -1)
        d = dyaw[kk, tt, aa]
        touching = boxes_overlap(rel, d, ego_half, half)  # (P,)
        later = boxes_overlap(rel + TTC_TAU[:, None, None] * rv, d, ego_half, half).any(0)  # (P,)
        out = np.zeros(len(dx), bool)
        out[kk[later & ~touching]] = True
        return out

    def _rollout(self, state: WorldState, v: float, obstacles: list[Obstacle]) -> np.ndarray:
        """The plan: IDM forward 4 s along the route with obstacles moving at constant speed, in the ego frame."""
        w = self.world
        s, acc = w.ego_s, self.accel
        out = np.zeros((N_WAYPOINTS, 3), np.float32)
        moving = [Obstacle(o.s, o.speed, o.min_gap, o.kind) for o in obstacles]
        steps = round(WAYPOINT_DT / 0.1)
        last = len(self._route_s) - 1
        at = []  # path index of each waypoint
        for k in range(N_WAYPOINTS * steps):
            i = min(bisect_left(self._route_s, s), last)  # np.searchsorted(route.s, s), for one float
            target = self._idm(v, float(self.curve_speed[i]), moving, s + self.limits.length / 2)
            acc = _clip(target, acc - JERK * 0.1, acc + JERK * 0.1) if k else acc
            v_next = max(v + acc * 0.1, 0.0)
            s += 0.5 * (v + v_next) * 0.1
            v = v_next
            for o in moving:
                o.s += o.speed * 0.1
            if (k + 1) % steps == 0:
                at.append(min(bisect_left(self._route_s, s), last))
        out[:, :2] = to_ego_frame(self.route.xy[at], state.ego)
        out[:, 2] = self.route.yaw[at]
        out[:, 2] = wrap_angle(out[:, 2] - state.ego[EGO_YAW])
        return out

    # ------------------------------------------------------------------ perception with privileges

    def _obstacles(self, state: WorldState, front: float, v: float) -> tuple[list[Obstacle], dict, LaneTrack]:
        w, r = self.world, self.route
        facts: dict = {
            "command": state.command,
            "speed_limit_kmh": round(state.speed_limit * 3.6),
            "ego_speed": round(v, 2),
            "light": None,
            "light_distance": None,
            "sign": None,
            "sign_distance": None,
            "pedestrians": [],
            "lead": None,
            "cut_in": None,
            "right_of_way": "ego",
            "lateral_action": self._lateral_action(state.command, w.ego_index),
        }
        obstacles: list[Obstacle] = []
        # SUMO drivers cannot see the ego's junction approach, so away from a green light we give way to everyone.
        in_junction = r.lane[w.ego_index].startswith(":")
        priority = not (in_junction or np.any((r.turn_s - front > -2) & (r.turn_s - front < 40)))
        # Lights.
        ahead = np.nonzero((self.light_s > front - 0.5) & (self.light_s - front < 80))[0]
        if len(ahead):
            j = int(ahead[np.argmin(self.light_s[ahead])])
            line, st = float(self.light_s[j]), int(state.light_state[j])
            facts["light"], facts["light_distance"] = LIGHT_NAMES[st], round(line - front, 1)
            if st == RED or (st == YELLOW and j not in self.committed_yellow):
                can_stop = line - front > v * v / (2 * 3.5) + 0.5
                if st == YELLOW and not can_stop:
                    self.committed_yellow.add(j)
                elif line - front > -0.5:
                    obstacles.append(Obstacle(line, 0.0, 0.5, "light", j))
                    facts["right_of_way"] = "light"
            priority = st != RED and line - front < 40
        # Signs.
        sign_ahead = np.nonzero((self.sign_s > front - 1.0) & (self.sign_s - front < 50))[0]
        for k in sign_ahead:
            kind = int(state.sign_kind[k])
            line = float(self.sign_s[k])
            facts["sign"], facts["sign_distance"] = ("stop" if kind == STOP_SIGN else "yield"), round(line - front, 1)
            priority = False
            if kind == STOP_SIGN:
                if k not in self.stopped_at and v < STOP_REST_SPEED and line - front < STOP_REST_REACH:
                    self.stopped_at[int(k)] = state.t
                served = k in self.stopped_at and state.t - self.stopped_at[int(k)] >= STOP_WAIT_S
                if not served:
                    obstacles.append(Obstacle(line, 0.0, 0.5, "stop_sign", int(k)))
                    facts["right_of_way"] = "stop_sign"
        # Vehicle centres, their corners (a car standing across our path reaches into it with its length) and
        # pedestrians, in one projection: its cost is mostly per call.
        veh, peds = state.vehicles, state.pedestrians
        s, lat, yaw = self._project(np.concatenate([veh[:, :2], box_corners(veh).reshape(-1, 2), peds[:, :2]]))
        n = 5 * len(veh)
        m = len(veh)
        drift = np.clip(veh[:, 3] * np.sin(veh[:, 2] - yaw[:m]), -LANE_DRIFT_RATE, LANE_DRIFT_RATE)
        lane = (self._lane_direction(state, lat[:m], yaw[:m]), s[:m], lat[:m], drift)
        obstacles += self._vehicle_obstacles(state, front, v, priority, facts, (s[:n], lat[:n], yaw[:n]), lane[0])
        obstacles += self._pedestrian_obstacles(state, front, v, facts, (s[n:], lat[n:], yaw[n:]))
        return obstacles, facts, lane

    def _lateral_action(self, command: str, i: int) -> str:
        """`_lateral_action`, remembered: it depends only on the (fixed) route, the path index and the command."""
        key = (command, i)
        if key not in self._lateral:
            self._lateral[key] = _lateral_action(command, self.world.ego_lateral, self.route, i)
        return self._lateral[key]

    def _project(self, pts: np.ndarray) -> Projection:
        """Arc length, signed lateral offset and path heading of points (N, 2) near the path ahead.

        It searches a window of every 2nd path point (1 m spacing: the tangent projection below restores precision)
        from 10 m behind the ego to 100 m ahead, coarse to fine: the nearest of every 8th window point first, then
        its 8 neighbours either side (the nearest first one where distances tie). It runs several times per
        simulation step for every agent, so it is the expert's hot spot: the window is a slice of precomputed rows,
        x and y are kept apart, and every (N, ...) array is as small as it can be."""
        i, stride = self.world.ego_index, PROJECT_STRIDE
        start = max(i - 20, 0)
        w = len(range(start, min(i + 200, len(self.route.s)), 2))  # window points
        pts_all, b = self._points[start % 2], start // 2  # window index j is index b + j of pts_all
        win = slice(b, b + w)
        xy, s, yaw = pts_all.xy[win], pts_all.s[win], pts_all.yaw[win]
        px, py = pts[:, 0:1].astype(np.float64), pts[:, 1:2].astype(np.float64)  # (N, 1)
        dx, dy = px - pts_all.x[b : b + w : stride], py - pts_all.y[b : b + w : stride]  # (N, Wc)
        k0 = stride * np.argmin(dx * dx + dy * dy, axis=1)  # (N,) window index of the nearest coarse point
        dx, dy = px - pts_all.near_x[b + k0], py - pts_all.near_y[b + k0]  # (N, 2S+1): window k0 - S ... k0 + S
        d2 = dx * dx + dy * dy
        if len(k0) and (k0.min() < stride or k0.max() > w - 1 - stride):
            # Neighbours beyond the window's ends are out. (Clamping them onto the end points, as a gather would,
            # picks the same point: the end point is a candidate too, and the first of equals is taken.)
            j = k0[:, None] + np.arange(-stride, stride + 1)
            d2 = np.where((j >= 0) & (j < w), d2, np.inf)
        k = k0 - stride + np.argmin(d2, axis=1)  # (N,)
        rel = pts - xy[k]
        c, sn = np.cos(yaw[k]), np.sin(yaw[k])
        return s[k] + rel[:, 0] * c + rel[:, 1] * sn, c * rel[:, 1] - sn * rel[:, 0], yaw[k]

    def _vehicle_obstacles(
        self,
        state: WorldState,
        front: float,
        v: float,
        priority: bool,
        facts: dict,
        projected: Projection,
        direction: np.ndarray,
    ) -> list[Obstacle]:
        """`projected`: `_project` of the N vehicle centres, then of their box corners (4N); `direction`: their
        `_lane_direction` (oncoming cars that keep their lane never cross it)."""
        veh = state.vehicles
        if not len(veh):
            return []
        half_w = self.limits.width / 2
        s, lat_all, path_yaw = projected
        lat, path_yaw = lat_all[: len(veh)], path_yaw[: len(veh)]
        cs, clat = s[len(veh) :].reshape(-1, 4), lat_all[len(veh) :].reshape(-1, 4)  # (N, 4)
        along = veh[:, 3] * np.cos(veh[:, 2] - path_yaw)
        corridor = (np.abs(clat).min(1) < half_w + 0.4) | ((clat.min(1) < 0) & (clat.max(1) > 0))
        rear = cs.min(1)
        out = []
        for n in np.nonzero(corridor & (rear > front - 1.0) & (rear - front < 80))[0]:
            out.append(Obstacle(float(rear[n]), max(float(along[n]), 0.0), 2.0, "vehicle", int(n)))
            if facts["lead"] is None or rear[n] - front < facts["lead"]["distance"]:
                speed = float(max(along[n], 0.0))
                facts["lead"] = {
                    "distance": round(float(rear[n] - front), 1),
                    "speed": round(speed, 1),
                    "state": "stopped" if speed < 0.5 else ("slower" if speed < v - 1.0 else "moving"),
                }
        # Futures of vehicles outside the corridor that enter it ahead of us: constant velocity, except that a car
        # pulling away (below 8 m/s) is assumed to keep accelerating at START_ACCEL, as one leaving a stop line does.
        # Near a junction without a green light, even a standing car may start across our path, unless we have been
        # waiting for WAIT_BREAK_S already (then it is waiting for us, and someone has to go).
        may_start = (
            (not priority)
            & (state.t - self.waiting_since < WAIT_BREAK_S)
            & (np.hypot(*(veh[:, :2] - state.ego[:2]).T) < 25)
        )  # (N,)
        candidate = ~corridor & ((veh[:, 3] > 0.3) | may_start) & (state.vehicle_kind != PARKED) & (direction >= 0)
        moving = np.nonzero(candidate)[0]
        if len(moving):
            t = np.arange(1, 9) * 0.5  # (8,)
            speed = veh[moving, 3:4]  # (M, 1)
            accel = np.where(speed < 8.0, START_ACCEL, 0.0)
            dist = speed * t[None] + 0.5 * accel * t[None] ** 2  # (M, 8)
            step = np.diff(dist, axis=1, prepend=0.0)  # (M, 8)
            fx, fy, _ = _turning_path(veh[moving], self.turn_rate[moving], t - 0.25, step)  # (M, 8)
            fs, flat, _ = self._project(np.stack([fx.ravel(), fy.ravel()], -1))
            fs, flat = fs.reshape(len(moving), 8), flat.reshape(len(moving), 8)
            inside = (np.abs(flat) < half_w + veh[moving, 5:6] / 2 + 0.5) & (fs > front - 2) & (fs - front < 60)
            first = inside.argmax(1)  # (M,) first future step inside the corridor, where there is one
            for m in np.nonzero(inside.any(1))[0]:
                n, h = moving[m], first[m]
                t_other = float(t[h])
                conflict_s = float(fs[m, h]) - veh[n, 5] / 2 - 1.5
                t_ego = (conflict_s - front) / max(v, 2.0)
                d_other = float(dist[m, h])
                must_yield = (not priority or d_other < veh[n, 3] ** 2 / (2 * 3.0) + 3.0) and t_other < t_ego + 1.5
                cut_in = abs(wrap_angle(veh[n, 2] - path_yaw[n])) < 0.5
                if must_yield or cut_in:
                    speed = float(max(veh[n, 3] * np.cos(veh[n, 2] - path_yaw[n]), 0.0)) if cut_in else 0.0
                    out.append(Obstacle(conflict_s, speed, 1.5, "crossing_vehicle", int(n)))
                    if cut_in:
                        facts["cut_in"] = "left" if lat[n] > 0 else "right"
                    else:
                        facts["right_of_way"] = "cross_traffic"
        return out

    def _pedestrian_obstacles(
        self, state: WorldState, front: float, v: float, facts: dict, projected: Projection
    ) -> list[Obstacle]:
        """`projected`: `_project` of the pedestrians."""
        peds = state.pedestrians
        if not len(peds):
            return []
        half_w = self.limits.width / 2
        s, lat, path_yaw = projected
        near = (s > front - 1.0) & (s - front < 45)
        t = np.arange(1, 7) * 0.5  # 3 s of constant velocity
        heading = np.stack([np.cos(peds[:, 2]), np.sin(peds[:, 2])], -1)  # (M, 2)
        idx = np.nonzero(near & (np.abs(lat) < 12))[0]
        # Where each candidate walks in the next 3 s, projected in one call.
        fut = peds[idx, None, :2] + t[None, :, None] * np.maximum(peds[idx, 3], 0)[:, None, None] * heading[idx, None]
        _, flat, _ = self._project(fut.reshape(-1, 2)) if len(idx) else (None, np.zeros(0), None)
        entering = np.any(np.abs(flat.reshape(len(idx), len(t))) < half_w + 0.8, axis=1)  # (K,)
        # The same tests for every candidate at once; the loop below only writes what they found.
        s_k, lat_k, yaw_k = s[idx], lat[idx], path_yaw[idx]
        in_path = np.abs(lat_k) < half_w + 1.0
        toward = -np.sign(lat_k) * (np.cos(yaw_k) * heading[idx, 1] - np.sin(yaw_k) * heading[idx, 0])
        slow = peds[idx, 3] < 0.7  # lingering at the curb
        crosser = state.pedestrian_intent[idx] == CROSS
        on_crosswalk = ((self.crosswalk_lo <= s_k[:, None]) & (s_k[:, None] <= self.crosswalk_hi)).any(1)
        # A crosser walking along the sidewalk to a crosswalk ahead will step onto it: wait for them there.
        at_crossing = ((self.crosswalk_lo - 3 <= s_k[:, None]) & (s_k[:, None] <= self.crosswalk_hi + 3)).any(1)
        about_to = crosser & (np.abs(lat_k) < 7.0) & ((toward > 0.3) | (slow & (toward > -0.3)) | at_crossing)
        on_crosswalk &= np.abs(lat_k) < 9.0
        # One still walking along the curb whom we cannot stop for any more is passed before they turn to step out:
        # a panic stop would leave us standing in their way.
        gap = np.maximum(s_k - 4.0 - front, 0.1)
        about_to &= (v * v / (2 * gap) < PED_MAX_DECEL) | (toward > 0.3) | (peds[idx, 3] < 0.3)
        blocks = in_path | entering | about_to
        out, rel_list = [], []
        for j in np.nonzero(blocks | (np.abs(lat_k) < 8.0))[0]:
            n = idx[j]
            if blocks[j]:
                out.append(Obstacle(float(s[n]) - 1.0, 0.0, 3.0, "pedestrian", int(n)))
                facts["right_of_way"] = "pedestrian"
            rel_list.append(
                (
                    float(s[n] - front),
                    {
                        "side": "ahead" if in_path[j] else ("left" if lat[n] > 0 else "right"),
                        "distance": round(float(s[n] - front), 1),
                        "intent": "cross" if crosser[j] else "wait",
                        "on_crosswalk": bool(on_crosswalk[j]),
                        "crossing_now": bool(crosser[j] and (in_path[j] or (entering[j] and peds[n, 3] > 0.3))),
                    },
                )
            )
        facts["pedestrians"] = [p for _, p in sorted(rel_list, key=lambda x: x[0])[:3]]
        return out


def _turning_path(
    start: np.ndarray, rate: np.ndarray, mid_t: np.ndarray, step: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y and yaw (A, T) of vehicles `start` (A, >= 3: x, y, yaw) that keep turning at `rate` (A,) rad/s, the turn
    capped at MAX_TURN, and travel `step` metres (A, T or 1) in each interval, heading taken at its middle `mid_t`."""
    yaw = start[:, 2:3] + np.clip(rate[:, None] * mid_t[None], -MAX_TURN, MAX_TURN)
    x = start[:, 0:1] + np.cumsum(step * np.cos(yaw), axis=1)
    y = start[:, 1:2] + np.cumsum(step * np.sin(yaw), axis=1)
    return x, y, yaw


def _clip(x: float, lo: float, hi: float) -> float:
    """float(np.clip(x, lo, hi)) for Python floats, the same to the bit (signed zeros included), without NumPy's call
    overhead, which the 40-step roll-out pays many times per simulation step. Not for NumPy float32 scalars: np.clip
    rounds the bounds to float32 for them."""
    return float(min(max(x, lo), hi))


def _speed_action(accel: float, v: float, obstacles: list[Obstacle], front: float) -> str:
    binding = [
        o
        for o in obstacles
        if o.kind in ("pedestrian", "crossing_vehicle", "stop_sign", "light") and o.s - front < max(3 * v, 15)
    ]
    if v < 0.3 and accel <= 0.1:
        return "wait" if binding else "stop"
    if binding and accel < -0.3:
        kinds = {o.kind for o in binding}
        return "yield" if kinds & {"pedestrian", "crossing_vehicle"} else "stop"
    if accel < -0.5:
        return "slow_down"
    if accel > 0.5:
        return "accelerate"
    return "keep"


def _lateral_action(command: str, lateral: float, route: RoutePath, i: int) -> str:
    lanes = route.lane[i : i + 40]
    if (
        len(set(ln.rsplit("_", 1)[0] for ln in lanes if not ln.startswith(":"))) == 1
        and len(set(lanes)) > 1
        and not any(ln.startswith(":") for ln in lanes)
    ):
        a, b = route.xy[i], route.xy[min(i + 39, len(route.xy) - 1)]
        d = route.yaw[i]
        side = np.cos(d) * (b - a)[1] - np.sin(d) * (b - a)[0]
        return "change_left" if side > 0 else "change_right"
    return {"left": "turn_left", "right": "turn_right", "straight": "straight"}.get(command, "follow_lane")
