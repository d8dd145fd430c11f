"""The gymnasium env: registered, passes gymnasium's checker, both action types drive, bad actions are named."""

import re

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import worlddrive.sim  # noqa: F401  (registers worlddrive/Drive-v0)
from worlddrive.sim.env import DriveEnv


def test_registered_and_passes_check_env():
    env = gym.make("worlddrive/Drive-v0", config={"family": "crosswalk"})
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_trajectory_action_follows_expert_plan():
    env = DriveEnv({"family": "straight"})
    obs, info = env.reset(seed=3)
    assert obs["camera"].shape == env.observation_space["camera"].shape and obs["camera"].dtype == np.uint8
    assert obs["bev"].shape == env.observation_space["bev"].shape
    assert isinstance(obs["instruction"], str) and obs["instruction"]
    start = info["progress_m"]
    collided = False
    for _ in range(60):
        obs, _reward, _term, _trunc, info = env.step(info["expert"].trajectory)
        collided |= bool(info["infractions"].collisions) or info["infractions"].offroad
    assert info["progress_m"] - start > 30.0 and not collided
    env.close()


def test_control_action_and_bad_actions():
    env = DriveEnv({"family": "straight", "action_type": "control", "bev": False})
    env.reset(seed=1)
    v0 = env.state.ego[3]
    for _ in range(10):
        env.step(np.array([0.0, -1.0], np.float32))
    assert env.state.ego[3] < v0
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.nan, 0.0], np.float32))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        env.step(np.array([3.0, 0.0], np.float32))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3, np.float32))
    env.close()


def test_bad_config_is_named():
    with pytest.raises(KeyError, match=r"unknown DriveEnv config keys.*'famly'"):
        DriveEnv({"famly": "straight"})
    with pytest.raises(KeyError, match="unknown scenario family"):
        DriveEnv({"family": "moon"})


def test_instruction_states_the_current_distance():
    """Like the dataset's instruction at every keyframe, the observed one says how far the next junction is now
    (rounded to 10 m), not how far it was when first phrased."""
    env = DriveEnv({"family": "straight", "bev": False})
    env.reset(seed=0)
    w = env.world
    seen = []
    for _ in range(120):
        _turn, dist = w.route.next_turn(w.ego_s)
        text = env.observer.instruction()
        if dist is not None:
            said = [int(m) for m in re.findall(r"\d+", text)]
            assert said == [max(10, round(dist / 10) * 10)], (text, dist)
            seen.append(said[0])
        env.step(env._info(None)["expert"].trajectory)
    assert len(set(seen)) > 1  # the distance counted down on the way
    env.close()
