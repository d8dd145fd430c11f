"""The privileged expert drives safely through the scenario families (short closed-loop checks)."""

import pytest

from worlddrive.eval.closed_loop import run_episode
from worlddrive.sim.expert import Expert
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
