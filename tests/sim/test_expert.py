"""The privileged expert drives safely through the scenario families (short closed-loop checks)."""

import dataclasses

import numpy as np
import pytest

from worlddrive.eval.closed_loop import run_episode
from worlddrive.sim.expert import MAX_LAT_ACC, PROJECT_STRIDE, Expert, Obstacle
from worlddrive.sim.scenarios import make_spec
from worlddrive.sim.state import CROSS
from worlddrive.sim.world import World


@pytest.mark.parametrize(
    "family,seed",
    [("intersection_signal", 1), ("crosswalk", 0), ("occluded_pedestrian", 0), ("cut_in", 1), ("yellow_light", 2)],
)
def test_expert_episode_is_clean(family, seed):
    res = run_episode(family, seed)
    assert res.error is None
    s = res.score
    assert s.collisions_at_fault == 0 and s.red_lights == 0 and s.ped_yield_violations == 0
    assert res.progress_m > 50
    assert s.ds > 0.8


def test_expert_waits_at_red_and_never_runs_it():
    waited = []

    def on_step(world, state, out):
        if out.facts["light"] == "red" and state.ego[3] < 0.1:
            waited.append(out.facts["light_distance"])

    res = run_episode("yellow_light", 1, on_step=on_step)
    assert res.score.red_lights == 0
    assert waited and 0 <= min(waited) < 5.0  # it stopped close to, and before, the stop line


def test_expert_plan_and_facts():
    w = World(make_spec("crosswalk", 1))
    st = w.reset()
    out = Expert(w).act(st)
    assert out.trajectory.shape == (8, 3)
    assert (out.trajectory[1:, 0] >= out.trajectory[:-1, 0] - 1e-3).all()  # moves forward along the road
    for key in ("command", "light", "sign", "pedestrians", "lead", "right_of_way", "speed_action", "lateral_action"):
        assert key in out.facts


def _project_reference(route, i: int, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The plain coarse-to-fine projection `Expert._project` must reproduce bit for bit (recorded data depend on it):
    the window gathered with clamped indices, distances as einsum."""
    sl = slice(max(i - 20, 0), i + 200, 2)
    xy, s, yaw = route.xy[sl], route.s[sl], route.yaw[sl]
    coarse = np.arange(0, len(xy), PROJECT_STRIDE)
    d = pts[:, None, :] - xy[None, coarse]
    k0 = coarse[np.argmin(np.einsum("nwc,nwc->nw", d, d), axis=1)]
    near = np.clip(k0[:, None] + np.arange(-PROJECT_STRIDE, PROJECT_STRIDE + 1), 0, len(xy) - 1)
    d = pts[:, None, :] - xy[near]
    k = near[np.arange(len(pts)), np.argmin(np.einsum("nwc,nwc->nw", d, d), axis=1)]
    rel = pts - xy[k]
    c, sn = np.cos(yaw[k]), np.sin(yaw[k])
    return s[k] + rel[:, 0] * c + rel[:, 1] * sn, c * rel[:, 1] - sn * rel[:, 0], yaw[k]


def test_project_matches_the_reference_bit_for_bit():
    w = World(make_spec("urban_mixed", 1))
    w.reset()
    expert, route = Expert(w), w.route
    rng = np.random.default_rng(0)
    last = len(route.s) - 1
    for i in (0, 1, 7, 20, 21, 150, last - 210, last - 199, last - 30, last):  # window clipped at either end, or not
        w.ego_index = i
        centre = route.xy[min(i + 40, last)]
        pts = (centre + rng.uniform(-70, 70, (300, 2))).astype(np.float32)
        pts[:20] = route.xy[max(i - 30, 0) : max(i - 30, 0) + 20]  # some exactly on (or behind) the path
        for got, want in zip(expert._project(pts), _project_reference(route, i, pts), strict=True):
            assert np.array_equal(got, want)
    w.close()


def _state_with_car(state, car: np.ndarray):
    """`state` with one CAR (x, y, yaw, speed, length, width) as the only other vehicle."""
    return dataclasses.replace(
        state, vehicles=car[None].astype(np.float32), vehicle_kind=np.zeros(1, np.int8), vehicle_ids=["c"]
    )


def test_guard_brakes_for_a_car_crossing_ahead_but_not_for_oncoming_traffic():
    w = World(make_spec("straight", 0))
    st = w.reset()
    expert, route = Expert(w), w.route
    v = float(st.ego[3])
    i = int(np.searchsorted(route.s, w.ego_s + 1.5 * v))  # where the ego is in 1.5 s
    p, yaw = route.xy[i], route.yaw[i]
    left = np.array([-np.sin(yaw), np.cos(yaw)])
    crossing = np.array([*(p + 9.0 * left), yaw - np.pi / 2, 6.0, 4.6, 1.85])  # there in 1.5 s too
    oncoming = np.array([*(route.xy[i + 60] + 3.5 * left), yaw + np.pi, 12.0, 4.6, 1.85])  # the next lane over

    def guarded(car: np.ndarray) -> float:
        state = _state_with_car(st, car)
        expert.turn_rate = np.zeros(1)
        _, _, lane = expert._obstacles(state, w.ego_s + 2.3, v)
        return expert._guard(state, v, 1.0, set(), lane)

    assert guarded(crossing) < 0
    assert guarded(oncoming) == 1.0
    w.close()


def test_curve_speed_respects_the_steering_rate():
    """The heldout S-bend near s = 80 m needs the steering to swing faster than it can at the lateral-acceleration
    speed: the expert slows down for it instead of leaving the road."""
    w = World(make_spec("heldout_city", 1000004))
    w.reset()
    expert, route = Expert(w), w.route
    k = int(np.searchsorted(route.s, 80.0))
    lateral_only = np.sqrt(MAX_LAT_ACC / np.maximum(np.abs(route.curvature[k]), 1e-4))
    assert expert.curve_speed[k] < 0.6 * min(lateral_only, route.speed_limit[k])
    w.close()


@pytest.mark.parametrize("family,seed", [("intersection_stop", 1000011), ("crosswalk", 1000095)])
def test_expert_avoids_turning_cars_and_passes_a_pedestrian_still_on_the_curb(family, seed):
    """A car turning across the junction (a straight-line forecast misses it) and a crosser walking to the curb
    beside the road (a panic stop would leave the ego in their way) once ended in at-fault collisions."""
    res = run_episode(family, seed)
    assert res.error is None and res.score.collisions_at_fault == 0


def test_approach_to_a_stop_line_follows_the_comfortable_profile():
    """Before the constant-deceleration stop binds, the speed already tracks it: a late jerk-limited ramp from full
    throttle would end in a harsh brake."""
    w = World(make_spec("straight", 0))
    w.reset()
    expert = Expert(w)
    line = Obstacle(100.0 + 10.0, 0.0, 0.5, "stop_sign")  # 9.5 m to stop in, 1.3 m/s^2 needed at 5 m/s
    assert expert._idm(5.0, 10.0, [line], 100.0) < 1.5  # free road: 1.9 m/s^2
    w.close()


def test_turn_rates_follow_each_vehicle_by_id():
    w = World(make_spec("straight", 0))
    st = w.reset()
    expert = Expert(w)
    car = np.array([0.0, 0.0, 0.2, 5.0, 4.6, 1.85])
    first = _state_with_car(st, car)
    assert np.array_equal(expert._turn_rates(first), [0.0])  # never seen before
    car[2] += 0.05
    later = dataclasses.replace(_state_with_car(st, car), t=first.t + 0.1)
    assert np.allclose(expert._turn_rates(later), [0.5], atol=1e-4)
    w.close()


def test_a_crosser_walking_to_the_crosswalk_ahead_is_waited_for():
    w = World(make_spec("crosswalk", 0))
    st = w.reset()
    expert, route = Expert(w), w.route
    lo = expert.crosswalk_s[0][0]
    i = int(np.searchsorted(route.s, lo - 2.0))  # on the sidewalk just before the crosswalk, walking along it
    yaw = route.yaw[i]
    pos = route.xy[i] + 5.0 * np.array([np.sin(yaw), -np.cos(yaw)])
    ped = np.array([[*pos, yaw, 1.3]], np.float32)
    state = dataclasses.replace(
        st, pedestrians=ped, pedestrian_intent=np.array([CROSS], np.int8), pedestrian_ids=["walker"]
    )
    w.ego_index = int(np.searchsorted(route.s, lo - 25.0))  # the ego 25 m before the crosswalk
    front = float(route.s[w.ego_index]) + 2.3
    obstacles = expert._pedestrian_obstacles(state, front, 0.0, {"right_of_way": "ego"}, expert._project(ped[:, :2]))
    assert [o.kind for o in obstacles] == ["pedestrian"]
    w.close()


def test_the_guards_ttc_test_is_the_metrics_without_its_margin(monkeypatch):
    """Expert._ttc_conflict re-states the metric's TTC rule in batched form (ahead, not touching, ego moving, boxes
    meeting at geometry.TTC_TIMES); with its safety margin removed it must agree with the metric on every sample."""
    from types import SimpleNamespace

    from worlddrive.eval.metrics import STOPPED_SPEED
    from worlddrive.sim import expert as expert_mod
    from worlddrive.sim.geometry import projected_overlap, ttc_conflict
    from worlddrive.sim.state import EGO_SPEED, EGO_YAW, EGO_YAW_RATE

    monkeypatch.setattr(expert_mod, "TTC_MARGIN", 0.0)
    monkeypatch.setattr(expert_mod, "TTC_MOVING", STOPPED_SPEED)
    rng = np.random.default_rng(0)
    k, a = 4000, 3  # ego poses (one sample each), agents per pose
    limits = SimpleNamespace(length=4.6, width=1.9)
    dx, dy = rng.uniform(-14, 14, (2, k, 1, a))  # agent centre minus ego centre, world frame
    eyaw = rng.uniform(-np.pi, np.pi, (k, 1))
    speed = rng.choice([0.0, 0.3, 3.0, 8.0, 14.0], (k, 1))
    ayaw = rng.uniform(-np.pi, np.pi, (a, 1))
    ahl, ahw = np.array([2.3, 0.3, 2.5]), np.array([0.95, 0.3, 1.0])  # car, pedestrian, van half sizes
    aspeed = np.array([9.0, 1.4, 0.0])
    got = expert_mod.Expert._ttc_conflict(SimpleNamespace(limits=limits), dx, dy, eyaw, speed, ayaw, ahl, ahw, aspeed)
    want = np.zeros(k, bool)
    for i in range(k):
        ego = np.zeros(EGO_YAW_RATE + 1)  # at the origin
        ego[EGO_YAW], ego[EGO_SPEED] = eyaw[i, 0], speed[i, 0]
        agents = np.stack([dx[i, 0], dy[i, 0], ayaw[:, 0], aspeed, 2 * ahl, 2 * ahw], -1)  # (A, 6)
        overlap, ahead = projected_overlap(ego, (limits.length, limits.width), agents)
        want[i] = speed[i, 0] > STOPPED_SPEED and ttc_conflict(overlap, ahead)
    assert 50 < want.sum() < k - 50  # both outcomes occur often enough to be compared
    np.testing.assert_array_equal(got, want)
