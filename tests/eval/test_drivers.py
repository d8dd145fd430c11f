"""The baselines drive as their names say, and --policy values that name no checkpoint are refused clearly."""

import numpy as np
import pytest

from worlddrive.eval.closed_loop import run_episode
from worlddrive.eval.drivers import (
    ConstantVelocityDriver,
    IdmDriver,
    PolicyDriver,
    make_driver,
    policy_dir,
    shift_plan,
)
from worlddrive.sim.expert import Expert
from worlddrive.sim.state import to_world_frame


def test_idm_baseline_runs_the_red_lights_the_expert_stops_for():
    # Training seeds (< 1_000_000) with a light on the route; the expert never runs a red, IDM ignores lights.
    idm = [run_episode("intersection_signal", s, IdmDriver()) for s in range(4)]
    expert = [run_episode("intersection_signal", s) for s in range(4)]
    assert sum(r.score.red_lights for r in expert) == 0
    assert sum(r.score.red_lights for r in idm) >= 1
    assert all(r.error is None for r in idm)


def test_constant_velocity_keeps_speed_and_heading():
    driver = ConstantVelocityDriver()
    speeds = []

    def on_step(world, state, out):
        speeds.append(state.ego[3])
        assert np.allclose(out.trajectory[:, 1:], 0) and np.all(np.diff(out.trajectory[:, 0]) >= 0)

    res = run_episode("straight", 1, driver, on_step=on_step)
    assert res.error is None and np.ptp(speeds[:20]) < 0.5  # no throttle or brake beyond holding speed


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown rules"):
        Expert(None, obey=frozenset({"vehicle", "gravity"}))


def test_policy_spec_without_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        policy_dir(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        make_driver(str(tmp_path / "missing"))


def test_a_policy_at_another_pace_is_named_so_and_a_bad_pace_is_refused():
    driver = make_driver("builtin@path")
    assert driver.name == "builtin@path" and driver.policy.config.pace == "path"
    assert make_driver("builtin").policy.config.pace == "cautious"  # the checkpoint's own
    assert policy_dir("builtin@path") == policy_dir("builtin")
    with pytest.raises(ValueError, match=r"driven with pace 'slow'.*PolicyConfig\.pace"):
        make_driver("builtin@slow")


def _straight_plan(speed: float) -> np.ndarray:
    plan = np.zeros((8, 3), np.float32)
    plan[:, 0] = speed * 0.5 * np.arange(1, 9)
    return plan


def test_a_shifted_plan_is_the_same_path_from_where_the_car_now_is():
    # Planned at (3, -2) heading 0.7 rad: 10 m/s straight ahead. 0.3 s later the car is 3 m further along it.
    planned_at = np.array([3.0, -2.0, 0.7, 10.0, 0, 0, 0, 0], np.float32)
    now = planned_at.copy()
    now[:2] = to_world_frame(np.array([3.0, 0.0]), planned_at)
    shifted = shift_plan(_straight_plan(10.0), planned_at, now, 0.3)
    assert np.allclose(shifted, _straight_plan(10.0), atol=1e-4)  # the 4 s beyond the horizon extend the last step
    # A car that drifted 1 m left of the plan is asked to come back 1 m right; its heading error is undone too.
    now[:2] = to_world_frame(np.array([3.0, 1.0]), planned_at)
    now[2] = 0.8
    shifted = shift_plan(_straight_plan(10.0), planned_at, now, 0.3)
    assert np.allclose(shifted[:, 2], -0.1, atol=1e-6)
    assert np.allclose(
        to_world_frame(shifted[:, :2], now), to_world_frame(_straight_plan(10.0)[:, :2] + [3, 0], planned_at), atol=1e-4
    )


class _CountingPolicy:
    """Stands in for WorldDrivePolicy: counts forward passes and frames seen; plans straight ahead at a speed
    that changes with the number of frames seen."""

    def __init__(self):
        self.predicts = self.frames = 0

    def reset(self):
        pass

    def observe(self, obs):
        self.frames += 1

    def predict(self, obs, reason=False):
        self.observe(obs)
        self.predicts += 1
        return {"trajectory": _straight_plan(4.0 + self.frames % 7), "reasoning": None}


def test_replanning_every_n_steps_runs_the_network_every_n_steps_and_sees_every_frame():
    policy = _CountingPolicy()
    res = run_episode("straight", 1, PolicyDriver(policy, replan_every=5))
    assert res.error is None and res.steps > 20
    assert policy.frames == res.steps and policy.predicts == -(-res.steps // 5)
    # Reasoning every 3 steps runs the network more often but drives the same episode.
    reasoning = PolicyDriver(_CountingPolicy(), replan_every=5, reason_every=3)
    again = run_episode("straight", 1, reasoning)
    assert reasoning.policy.predicts > policy.predicts and again.as_dict() == res.as_dict()
    with pytest.raises(ValueError, match="replan_every"):
        PolicyDriver(policy, replan_every=0)


def test_an_ensemble_drives_its_members_mean_plan():
    from worlddrive.sim.env import DriveEnv

    driver = make_driver("builtin@path+builtin@action")
    assert driver.name == "builtin@path+builtin@action"
    members = [make_driver(s).policy for s in ("builtin@path", "builtin@action")]
    env = DriveEnv({"family": "intersection_stop", "bev": False})
    try:
        obs, _ = env.reset(seed=3)
        for m in [driver.policy, *members]:
            m.reset()
        plans = [m.predict(obs)["trajectory"] for m in members]
        assert not np.allclose(*plans)  # the paces differ, so the mean is neither
        assert np.allclose(driver.policy.predict(obs)["trajectory"], np.mean(plans, axis=0))
    finally:
        env.close()
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        make_driver("builtin+nowhere")
