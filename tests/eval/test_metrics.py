"""Drive Score on hand-made situations: a straight two-lane road running east with one crosswalk and one stop line.

Eastbound lane y in [-3.5, 0] (ego centre y = -1.75), westbound lane y in [0, 3.5]; the two drivable polygons overlap
by 0.5 m, as lanes and junction areas do.
Crosswalk x in [40, 44]; the eastbound stop line at x = 38 carries either a light or a stop sign facing west.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from worlddrive.eval.metrics import DriveScore, InfractionTracker, aggregate, drive_score
from worlddrive.sim.state import CAR, GREEN, PARKED, RED, STOP_SIGN, YELLOW, RoadMap, WorldState

DT = 0.1
LANE_Y = -1.75
EGO_LENGTH = 4.5
HALF = EGO_LENGTH / 2
STOP_X, CROSSWALK_X = 38.0, (40.0, 44.0)
STOP_LINE = np.array([[[STOP_X, -3.5], [STOP_X, 0.0]]], np.float32)  # (1, 2, 2)


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)


ROAD = RoadMap(
    drivable=[rect(-50, -3.5, 150, 0), rect(-50, -0.5, 150, 3.5)],  # overlapping in y in [-0.5, 0]
    sidewalks=[rect(-50, -6, 150, -3.5), rect(-50, 3.5, 150, 6)],
    crosswalks=[rect(CROSSWALK_X[0], -3.5, CROSSWALK_X[1], 3.5)],
    markings=[],
    marking_kind=np.zeros(0, np.int8),
    stop_lines=STOP_LINE,
)


def state(
    t: float,
    ego: tuple[float, float, float, float],
    vehicles: Sequence[tuple[float, ...]] = (),
    kinds: Sequence[int] | None = None,
    peds: Sequence[tuple[float, ...]] = (),
    light: int | None = None,
    light_yaw: float = np.pi,
    stop_sign: bool = False,
    speed_limit: float = 13.9,
) -> WorldState:
    """Ego (x, y, yaw, speed); vehicles (x, y, yaw, speed, length, width); peds (x, y, yaw, speed)."""
    n, m, lights, signs = len(vehicles), len(peds), int(light is not None), int(stop_sign)
    x, y, yaw, speed = ego
    return WorldState(
        t=t,
        ego=np.array([x, y, yaw, speed, 0, 0, 0], np.float32),
        ego_size=(EGO_LENGTH, 1.8),
        vehicles=np.array(vehicles, np.float32).reshape(n, 6),
        vehicle_kind=np.array(kinds if kinds is not None else [CAR] * n, np.int8),
        vehicle_ids=[f"v{i}" for i in range(n)],
        pedestrians=np.array(peds, np.float32).reshape(m, 4),
        pedestrian_intent=np.zeros(m, np.int8),
        pedestrian_ids=[f"p{i}" for i in range(m)],
        light_pos=np.full((lights, 2), [STOP_X, -4.5], np.float32),
        light_yaw=np.full(lights, light_yaw, np.float32),
        light_state=np.full(lights, light if light is not None else GREEN, np.int8),
        light_stop_line=STOP_LINE[:lights],
        sign_pos=np.full((signs, 2), [STOP_X, -4.5], np.float32),
        sign_yaw=np.full(signs, np.pi, np.float32),
        sign_kind=np.full(signs, STOP_SIGN, np.int8),
        sign_value=np.zeros(signs, np.float32),
        sign_stop_line=STOP_LINE[:signs],
        route=np.array([[-50, LANE_Y], [150, LANE_Y]], np.float32),
        speed_limit=speed_limit,
        command="follow",
    )


def drive(speeds: list[float], x0: float, **scene) -> list[WorldState]:
    """The ego drives east in its lane with the given speed per step; scene entries that are callables get t."""
    xs = x0 + np.concatenate([[0.0], np.cumsum(speeds)[:-1] * DT])
    states = []
    for k, (x, v) in enumerate(zip(xs, speeds, strict=True)):
        t = k * DT
        kwargs = {key: value(t) if callable(value) else value for key, value in scene.items()}
        states.append(state(t, (x, LANE_Y, 0.0, v), **kwargs))
    return states


def score(states: list[WorldState], progress: float = 50.0, expert: float = 50.0) -> DriveScore:
    tracker = InfractionTracker(ROAD, DT)
    for s in states:
        tracker.update(s)
    return tracker.summary(progress, expert)


def ramp(v0: float, v1: float, accel: float) -> list[float]:
    """Speeds from v0 towards v1 changing by accel·DT per step (v1 excluded)."""
    n = round(abs(v1 - v0) / (abs(accel) * DT))
    return list(np.linspace(v0, v1, n, endpoint=False))


def test_formula_exact_value():
    assert drive_score(0.5, 1, 1, 1, 0, 0.7, 1, 0.5) == pytest.approx(0.5 * (0 + 3.5 + 2 + 1) / 14)
    assert drive_score(1, 1, 1, 1, 1, 1, 1, 1) == pytest.approx(1.0)
    assert drive_score(1, 1, 1, 0, 1, 1, 1, 1) == 0.0


def test_benign_drive_scores_one():
    def traffic(t: float) -> list[tuple[float, ...]]:  # an oncoming car and a leader at the same speed
        return [(100 - 10 * t, 1.75, np.pi, 10, 4.5, 1.8), (25 + 10 * t, LANE_Y, 0, 10, 4.5, 1.8)]

    waiting_ped = [(42, -5, np.pi / 2, 0)]  # on the sidewalk next to the crosswalk
    states = drive([10.0] * 40, 0.0, vehicles=traffic, peds=waiting_ped, light=GREEN)
    result = score(states, progress=40, expert=40)
    assert result.ds == pytest.approx(1.0)
    assert result.steps == 40
    counts = {k: v for k, v in result.as_dict().items() if isinstance(v, int) and k != "steps"}
    assert not any(counts.values()), counts


def test_rear_ending_a_slower_car_is_one_at_fault_collision():
    def lead(t: float) -> list[tuple[float, ...]]:
        return [(15 + 2 * t, LANE_Y, 0, 2, 4.5, 1.8)]

    result = score(drive([10.0] * 30, 0.0, vehicles=lead))
    assert result.collisions_at_fault == 1  # touching on consecutive steps is one event
    assert result.nc == 0.0
    assert result.ds == 0.0


@pytest.mark.parametrize(("ego_speed", "other_speed", "nc"), [(0.0, 5.0, 1.0), (10.0, 15.0, 1.0)])
def test_being_rear_ended_is_not_at_fault(ego_speed: float, other_speed: float, nc: float):
    def follower(t: float) -> list[tuple[float, ...]]:
        return [(-15 + other_speed * t, LANE_Y, 0, other_speed, 4.5, 1.8)]

    result = score(drive([ego_speed] * 40, 0.0, vehicles=follower))
    assert result.collisions_at_fault + result.collisions_not_at_fault == 1
    assert result.nc == nc


@pytest.mark.parametrize(("ego_speed", "nc"), [(0.0, 1.0), (3.0, 0.0)])
def test_side_impact_is_at_fault_unless_the_ego_stands(ego_speed: float, nc: float):
    def crosser(t: float) -> list[tuple[float, ...]]:  # drives across the ego's lane from the right, into its side
        return [(2.0 + ego_speed * 0.5, -12 + 8 * t, np.pi / 2, 8.0, 4.5, 1.8)]

    result = score(drive([ego_speed] * 30, 0.0, vehicles=crosser))
    assert result.collisions_at_fault + result.collisions_not_at_fault == 1
    assert result.nc == nc


@pytest.mark.parametrize("ego_speed", [0.0, 3.0])
def test_touching_a_pedestrian_is_always_at_fault(ego_speed: float):
    def walker(t: float) -> list[tuple[float, ...]]:  # walks across the ego's lane, through its front
        return [(HALF - 0.5, -4 + 1.5 * t, np.pi / 2, 1.5)]

    result = score(drive([ego_speed] * 30, 0.0, peds=walker))
    assert result.collisions_at_fault == 1
    assert result.nc == 0.0


@pytest.mark.parametrize(("kind", "nc"), [(PARKED, 0.5), (CAR, 0.0)])
def test_touching_a_parked_car_halves_nc(kind: int, nc: float):
    result = score(drive([1.0] * 50, 0.0, vehicles=[(8, LANE_Y, 0, 0, 4.5, 1.8)], kinds=[kind]))
    assert result.nc == nc
    assert result.collisions_static == int(kind == PARKED)


@pytest.mark.parametrize(
    ("light", "light_yaw", "tlc"),
    [(RED, np.pi, 0.0), (YELLOW, np.pi, 1.0), (GREEN, np.pi, 1.0), (RED, 0.0, 1.0)],  # last: light for the other way
)
def test_crossing_the_stop_line_on_red(light: int, light_yaw: float, tlc: float):
    result = score(drive([10.0] * 20, 20.0, light=light, light_yaw=light_yaw))
    assert result.tlc == tlc
    assert result.red_lights == int(tlc == 0)


def test_stopping_before_a_red_light_keeps_tlc():
    result = score(drive(ramp(8, 0, 2) + [0.0] * 20, STOP_X - HALF - 17, light=RED))
    assert result.tlc == 1.0


@pytest.mark.parametrize(("ped_y", "yc"), [(1.5, 0.0), (3.4, 1.0)])  # 3.25 m / 5.15 m from the ego centreline
def test_driving_onto_an_occupied_crosswalk(ped_y: float, yc: float):
    result = score(drive([8.0] * 40, 20.0, peds=[(42, ped_y, np.pi / 2, 0)]))
    assert result.yc == yc
    assert result.nc == 1.0


def test_stopping_before_the_crosswalk_yields():
    speeds = ramp(8, 0, 2) + [0.0] * 20
    result = score(drive(speeds, CROSSWALK_X[0] - HALF - 18, peds=[(42, 1.5, np.pi / 2, 0)]))
    assert result.yc == 1.0
    assert result.c == 1.0


@pytest.mark.parametrize(("speed", "yc"), [(2.0, 0.0), (0.8, 1.0)])
def test_pedestrian_right_ahead_of_the_bumper(speed: float, yc: float):
    result = score([state(0.0, (0, LANE_Y, 0, speed), peds=[(HALF + 1.0, LANE_Y, np.pi / 2, 1.0)])])
    assert result.yc == yc


def test_rolling_through_a_stop_sign():
    result = score(drive([5.0] * 40, 20.0, stop_sign=True))
    assert result.stop_sign_violations == 1
    assert result.yc == 0.0


@pytest.mark.parametrize(("front_at_stop", "yc"), [(STOP_X - 2, 1.0), (STOP_X - 8, 0.0)])
def test_stop_then_go_at_a_stop_sign(front_at_stop: float, yc: float):
    brake, wait, go = ramp(5, 0, 2), [0.0] * 10, ramp(0, 5, 1.5) + [5.0] * 20
    x0 = front_at_stop - HALF - sum(brake) * DT
    result = score(drive(brake + wait + go, x0, stop_sign=True))
    assert result.yc == yc


@pytest.mark.parametrize(("decel", "c"), [(6.0, 0.0), (2.0, 1.0)])
def test_harsh_brake_breaks_comfort(decel: float, c: float):
    result = score(drive([10.0] * 10 + ramp(10, 0, decel) + [0.0] * 10, -40.0))
    assert result.c == c


def test_fast_yaw_rate_breaks_comfort():
    states = [state(k * DT, (0, LANE_Y, 1.2 * k * DT, 3.0)) for k in range(20)]  # 1.2 rad/s > 0.95, lateral 3.6 m/s²
    assert score(states).c == 0.0


@pytest.mark.parametrize(("progress", "expert", "ep"), [(120, 100, 1.0), (50, 100, 0.5), (0, 2, 1.0), (-5, 100, 0.0)])
def test_progress_is_clipped(progress: float, expert: float, ep: float):
    assert score(drive([10.0] * 5, 0.0), progress, expert).ep == pytest.approx(ep)


def test_leaving_the_road():
    states = [state(k * DT, (k, LANE_Y - 0.15 * k, -0.15, 10.0)) for k in range(20)]  # drifts onto the sidewalk
    result = score(states)
    assert result.dac == 0.0
    assert result.offroad_steps > 0


@pytest.mark.parametrize("y", [1.75, 0.65])  # the other lane; straddling, with the right corners in the overlap
def test_drivable_area_is_the_union_of_polygons(y: float):
    assert score([state(0.0, (0, y, 0, 5.0))]).dac == 1.0


@pytest.mark.parametrize(
    ("other", "ttc"),
    [
        ((HALF + 5 + 2.25, LANE_Y, 0, 0, 4.5, 1.8), 0.0),  # stopped car 5 m ahead, closing at 10 m/s
        ((HALF + 15 + 2.25, LANE_Y, 0, 0, 4.5, 1.8), 1.0),  # 15 m ahead: more than 0.9 s away
        ((-HALF - 3 - 2.25, LANE_Y, 0, 15, 4.5, 1.8), 1.0),  # closing from behind: its problem
    ],
)
def test_time_to_collision(other: tuple[float, ...], ttc: float):
    result = score([state(0.0, (0, LANE_Y, 0, 10.0), vehicles=[other])])
    assert result.ttc == ttc
    assert result.nc == 1.0


def test_speed_limit_fraction():
    speeds = [10.0] * 7 + [11.0] * 3  # limit 10 with 0.5 m/s tolerance
    assert score(drive(speeds, 0.0, speed_limit=10.0)).sl == pytest.approx(0.7)
    assert score(drive([10.4] * 10, 0.0, speed_limit=10.0)).sl == 1.0


def test_aggregate_means_scores_and_sums_counts():
    good = score(drive([10.0] * 10, 0.0))
    bad = score(drive([10.0] * 20, 20.0, light=RED))
    out = aggregate([good, bad])
    assert out["episodes"] == 2
    assert out["tlc"] == pytest.approx(0.5)
    assert out["ds"] == pytest.approx((good.ds + bad.ds) / 2)
    assert out["red_lights"] == 1
    assert out["steps"] == 30
