"""Fake episodes: the shapes and value ranges of `record_episode`, made in microseconds from random numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from worlddrive.data.generate import generate
from worlddrive.data.record import AGENT_FIELDS, COMMANDS, FUTURE, MAX_AGENTS, PAST, EpisodeRecord
from worlddrive.sim.camera import BEV_CHANNELS
from worlddrive.sim.state import CONTROL_NAMES, STOP_HORIZON

BEV_SIZE = 16


def fake_record(seed: int, n_keys: int = 14, H: int = 16, W: int = 32, family: str = "straight") -> EpisodeRecord:
    """A deterministic random episode of n_keys keyframes, hence n_keys - PAST - FUTURE samples."""
    rng = np.random.default_rng([seed, len(family)])
    ns = n_keys - PAST - FUTURE
    t = FUTURE + 1
    ego = rng.normal(size=(ns, 7)).astype(np.float32)
    ego[:, 3] = rng.uniform(0, 15, ns)  # speed
    agents = rng.normal(size=(ns, t, MAX_AGENTS, len(AGENT_FIELDS))).astype(np.float32)
    agents[..., 3] = np.abs(agents[..., 3])
    return EpisodeRecord(
        family=family,
        seed=seed,
        frames=rng.integers(0, 256, (n_keys, H, W, 3), np.uint8),
        bev=rng.integers(0, 2, (n_keys, len(BEV_CHANNELS), BEV_SIZE, BEV_SIZE), np.uint8),
        key_index=np.arange(PAST, PAST + ns, dtype=np.int32),
        ego=ego,
        trajectory=rng.uniform(-50, 50, (ns, FUTURE, 3)).astype(np.float32),
        past_trajectory=rng.uniform(-20, 20, (ns, PAST, 3)).astype(np.float32),
        agents=agents,
        agent_mask=rng.random((ns, t, MAX_AGENTS)) < 0.3,
        lights=rng.integers(-1, 3, (ns, t), np.int8),
        command=rng.integers(0, len(COMMANDS), ns, np.int8),
        speed_limit=rng.uniform(8, 20, ns).astype(np.float32),
        stop_distance=rng.uniform(-1, STOP_HORIZON, ns).astype(np.float32),
        stop_control=rng.integers(0, len(CONTROL_NAMES), ns, np.int8),
        instruction=[f"Drive on, step {i} — ünïcode" for i in range(ns)],
        reasoning=[" ".join(["word"] * int(rng.integers(3, 12))) for _ in range(ns)],
        facts=[json.dumps({"seed": seed, "row": i}) for i in range(ns)],
    )


def fake_record_episode(
    family: str,
    seed: int,
    camera: object = None,
    bev: object = None,
    perturb: float = 0.0,
    takeover: object = None,
    takeover_seconds: tuple[float, float] = (1.0, 3.0),
    family_config: dict | None = None,
) -> EpisodeRecord:
    """Drop-in for `record_episode`: episodes of 12-14 keyframes (2-4 samples) depending on the seed."""
    assert takeover is None or callable(takeover.act), "a takeover arrives as a driver, not as its name"
    return fake_record(seed, n_keys=12 + seed % 3, family=family)


def make_dataset(
    out: Path,
    families: tuple[str, ...] = ("straight", "crosswalk"),
    episodes: int = 3,
    episodes_per_shard: int = 2,
    **kwargs: object,
) -> dict:
    """generate() on fake episodes, seeds from 0."""
    kwargs = {"progress": False, "record_fn": fake_record_episode, **kwargs}
    return generate(list(families), episodes, 0, out, episodes_per_shard=episodes_per_shard, **kwargs)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small fake dataset shared read-only by a module's tests: 2 families x 3 episodes in 3 shards."""
    out = tmp_path_factory.mktemp("ds")
    make_dataset(out)
    return out
