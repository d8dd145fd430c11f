"""Recovery data: noise bursts are seeded, really displace the ego, and never reach into a kept sample's future."""

import numpy as np
import pytest

from worlddrive.data.record import FUTURE, KEY_EVERY, NoiseBursts, record_episode
from worlddrive.sim.vehicle import DT

STEPS = 250  # a 25 s episode at 10 Hz


def test_bursts_are_seeded_short_and_spaced():
    a, b = NoiseBursts(3, STEPS), NoiseBursts(3, STEPS)
    assert np.array_equal(a.offset, b.offset) and np.array_equal(a.active, b.active)
    assert not np.array_equal(a.active, NoiseBursts(4, STEPS).active)
    edges = np.diff(a.active.astype(int))
    starts, ends = np.nonzero(edges == 1)[0] + 1, np.nonzero(edges == -1)[0] + 1
    assert len(starts) >= 2
    lengths = (ends - starts[: len(ends)]) * DT
    assert ((lengths > 0.45) & (lengths < 1.55)).all()
    assert ((starts[1:] - ends[: len(starts) - 1]) * DT > 4.9).all()  # the expert has time to recover
    assert (a.offset[~a.active] == 0).all()


def test_during_a_burst_the_expert_is_ignored():
    noise = NoiseBursts(0, STEPS)
    k = int(np.argmax(noise.active))  # the first step of the first burst
    first = noise(k, 1.0, 0.1, speed=10.0, wheelbase=2.7)
    later = noise(k + 1, -5.0, -0.3, speed=10.0, wheelbase=2.7)  # the expert now asks for something else
    assert np.allclose(first, later, atol=abs(noise.offset[k] - noise.offset[k + 1]).max() + 1e-9)
    assert first != (1.0, 0.1)
    assert noise(0, 1.0, 0.1, speed=10.0, wheelbase=2.7) == (1.0, 0.1)  # before the first burst: the expert's


def test_perturbed_episode_keeps_only_clean_futures_and_shows_drift():
    clean = record_episode("straight", 1)
    noisy = record_episode("straight", 1, perturb=1.0)
    active = NoiseBursts(1, STEPS).active
    assert 0 < noisy.num_samples < clean.num_samples
    for i in noisy.key_index:
        assert not active[KEY_EVERY * i : KEY_EVERY * (i + FUTURE)].any()
    # the past poses of kept samples show the drift the expert recovers from
    assert np.abs(noisy.past_trajectory[:, :, 1]).max() > np.abs(clean.past_trajectory[:, :, 1]).max() + 0.2


def test_probability_decides_per_episode_and_is_checked():
    assert record_episode("straight", 1, perturb=0.0).num_samples == record_episode("straight", 1).num_samples
    with pytest.raises(ValueError, match="perturb must be a probability"):
        record_episode("straight", 1, perturb=-0.1)
