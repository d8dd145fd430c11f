"""Recovery data: noise or policy bursts are seeded, really displace the ego, and never reach into a kept sample's
future."""

import numpy as np
import pytest

from worlddrive.data.record import FUTURE, KEY_EVERY, PAST, NoiseBursts, Takeover, record_episode
from worlddrive.sim.expert import ExpertOutput
from worlddrive.sim.state import EGO_SPEED, NO_CONTROL, STOP_CONTROL, STOP_HORIZON
from worlddrive.sim.vehicle import DT

STEPS = 250  # a 25 s episode at 10 Hz
WHEELBASE = 2.7


class _State:
    """The part of a WorldState the noise reads."""

    def __init__(self, speed: float):
        self.ego = np.zeros(7, np.float32)
        self.ego[EGO_SPEED] = speed


class _SwerveLeft:
    """A takeover driver that steers hard left at its own speed and counts what it is asked."""

    name = "swerve"

    def __init__(self):
        self.resets, self.steps = 0, []

    def reset(self, world) -> None:
        self.resets += 1

    def act(self, state) -> ExpertOutput:
        self.steps.append(round(state.t / DT))
        return ExpertOutput(0.0, 0.3, np.zeros((8, 3), np.float32))


def test_bursts_are_seeded_short_and_spaced():
    a, b = NoiseBursts(3, STEPS, WHEELBASE), NoiseBursts(3, STEPS, WHEELBASE)
    assert np.array_equal(a.offset, b.offset) and np.array_equal(a.active, b.active)
    assert not np.array_equal(a.active, NoiseBursts(4, STEPS, WHEELBASE).active)
    edges = np.diff(a.active.astype(int))
    starts, ends = np.nonzero(edges == 1)[0] + 1, np.nonzero(edges == -1)[0] + 1
    assert len(starts) >= 2
    lengths = (ends - starts[: len(ends)]) * DT
    assert ((lengths > 0.45) & (lengths < 1.55)).all()
    assert ((starts[1:] - ends[: len(starts) - 1]) * DT > 4.9).all()  # the expert has time to recover
    assert (a.offset[~a.active] == 0).all()


def test_during_a_burst_the_expert_is_ignored():
    noise = NoiseBursts(0, STEPS, WHEELBASE)
    k = int(np.argmax(noise.active))  # the first step of the first burst
    first = noise(k, _State(10.0), 1.0, 0.1)
    later = noise(k + 1, _State(10.0), -5.0, -0.3)  # the expert now asks for something else
    assert np.allclose(first, later, atol=abs(noise.offset[k] - noise.offset[k + 1]).max() + 1e-9)
    assert first != (1.0, 0.1)
    assert noise(0, _State(10.0), 1.0, 0.1) == (1.0, 0.1)  # before the first burst: the expert's


def test_perturbed_episode_keeps_only_clean_futures_and_shows_drift():
    clean = record_episode("straight", 1)
    noisy = record_episode("straight", 1, perturb=1.0)
    active = NoiseBursts(1, STEPS, WHEELBASE).active
    assert 0 < noisy.num_samples < clean.num_samples
    for i in noisy.key_index - PAST:  # rows of the padded frames -> keyframes
        assert not active[KEY_EVERY * i : KEY_EVERY * (i + FUTURE)].any()
    # the past poses of kept samples show the drift the expert recovers from
    assert np.abs(noisy.past_trajectory[:, :, 1]).max() > np.abs(clean.past_trajectory[:, :, 1]).max() + 0.2


def test_probability_decides_per_episode_and_is_checked():
    assert record_episode("straight", 1, perturb=0.0).num_samples == record_episode("straight", 1).num_samples
    with pytest.raises(ValueError, match="perturb must be a probability"):
        record_episode("straight", 1, perturb=-0.1)


def test_takeover_policy_drives_its_bursts_after_seeing_a_second_before():
    driver = _SwerveLeft()
    clean = record_episode("straight", 1)
    taken = record_episode("straight", 1, perturb=1.0, takeover=driver)
    bursts = Takeover(1, STEPS, driver)
    assert driver.resets == 1
    asked = np.zeros(STEPS + 1, bool)
    asked[driver.steps] = True
    assert asked[bursts.active].all()  # it drives every burst ...
    starts = np.nonzero(np.diff(bursts.active.astype(int)) == 1)[0] + 1
    assert all(asked[s - PAST * KEY_EVERY : s].all() for s in starts if s < len(asked))  # ... having seen 1 s before
    assert asked.mean() < 0.6  # and is not run where nobody needs it
    assert 0 < taken.num_samples < clean.num_samples
    for i in taken.key_index - PAST:
        assert not bursts.active[KEY_EVERY * i : KEY_EVERY * (i + FUTURE)].any()
    assert taken.past_trajectory[:, :, 1].min() < clean.past_trajectory[:, :, 1].min() - 0.2  # it swerved left:
    # seen from after the burst, the past lies to the right (negative y)


def test_takeover_bursts_last_as_long_as_asked():
    def lengths(bursts: Takeover) -> np.ndarray:
        edges = np.diff(bursts.active.astype(int))
        starts, ends = np.nonzero(edges == 1)[0] + 1, np.nonzero(edges == -1)[0] + 1
        return (ends - starts[: len(ends)]) * DT

    default, long = lengths(Takeover(2, STEPS, _SwerveLeft())), lengths(Takeover(2, STEPS, _SwerveLeft(), (5.0, 8.0)))
    assert len(default) and ((default > 0.95) & (default < 3.05)).all()
    assert len(long) and ((long > 4.95) & (long < 8.05)).all()
    with pytest.raises(ValueError, match="0 < A <= B"):
        record_episode("straight", 1, perturb=1.0, takeover=_SwerveLeft(), takeover_seconds=(0.0, 2.0))


def test_samples_carry_the_routes_next_stop_line():
    """Each sample's stop line is the map's at its keyframe: the first ones close in on the stop sign 0.5 s apart."""
    rec = record_episode("intersection_stop", 3)
    assert rec.stop_control[0] == STOP_CONTROL and 0 < rec.stop_distance[0] < STOP_HORIZON
    approach = rec.stop_distance[:4]
    assert (rec.stop_control[:4] == STOP_CONTROL).all() and (np.diff(approach) < -1.0).all()  # moving at > 2 m/s
    assert rec.stop_control[-1] == NO_CONTROL and rec.stop_distance[-1] == STOP_HORIZON  # past the junction
