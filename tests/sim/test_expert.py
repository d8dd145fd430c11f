"""The privileged expert drives safely through the scenario families (short closed-loop checks)."""

import numpy as np
import pytest

from worlddrive.eval.closed_loop import run_episode
from worlddrive.sim.expert import PROJECT_STRIDE, Expert
from worlddrive.sim.scenarios import make_spec
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
