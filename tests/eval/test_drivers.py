"""The baselines drive as their names say, and --policy values that name no checkpoint are refused clearly."""

import numpy as np
import pytest

from worlddrive.eval.closed_loop import run_episode
from worlddrive.eval.drivers import ConstantVelocityDriver, IdmDriver, make_driver, policy_dir
from worlddrive.sim.expert import Expert


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
