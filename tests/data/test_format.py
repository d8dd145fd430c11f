"""Shards round-trip exactly, appear atomically, and `validate` names the shard and field of every kind of damage."""

import json
import os
import shutil

import numpy as np
import pytest
import zarr
from conftest import fake_record, make_dataset

from worlddrive.data import format as fmt
from worlddrive.data.format import (
    LABEL_FIELDS,
    SCHEMA_VERSION,
    TEXT_FIELDS,
    load_info,
    load_stats,
    read_shard,
    validate,
    write_shard,
)


def _records():
    return [fake_record(1), fake_record(2, n_keys=13, family="crosswalk"), fake_record(3, n_keys=11)]


def test_round_trip_equals_records(tmp_path):
    records = _records()
    path = tmp_path / "shard_00000.zarr"
    attrs = write_shard(path, records, {"camera": None})
    back = read_shard(path)
    assert attrs["episodes"] == [["straight", 1], ["crosswalk", 2], ["straight", 3]]
    assert len(back) == len(records)
    for r, b in zip(records, back, strict=True):
        assert (b.family, b.seed) == (r.family, r.seed)
        for name in ("frames", "bev", "key_index", *LABEL_FIELDS):
            np.testing.assert_array_equal(getattr(b, name), getattr(r, name), err_msg=name)
            assert getattr(b, name).dtype == getattr(r, name).dtype, name
        for name in TEXT_FIELDS:
            assert getattr(b, name) == getattr(r, name)


def test_key_index_is_rebased_to_shard_rows(tmp_path):
    records = _records()
    write_shard(tmp_path / "s.zarr", records, {})
    group = zarr.open_group(tmp_path / "s.zarr", mode="r")
    frames, keys = group["frames"][...], group["key_index"][...]
    expected = np.concatenate([r.frames[r.key_index] for r in records])  # each sample's current frame
    np.testing.assert_array_equal(frames[keys], expected)


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "shard_00000.zarr"
    partial = tmp_path / "shard_00000.zarr.partial"
    partial.mkdir()
    (partial / "junk").write_text("left by a killed writer")
    write_shard(path, _records(), {})
    assert path.is_dir() and not partial.exists()
    with pytest.raises(FileExistsError, match=r"shard_00000\.zarr"):
        write_shard(path, _records()[:1], {})
    assert len(read_shard(path)) == 3  # untouched

    real = fmt._write_array

    def fail_midway(group, name, field, data):
        if name == "trajectory":
            raise OSError("disk full")
        real(group, name, field, data)

    monkeypatch.setattr(fmt, "_write_array", fail_midway)
    other = tmp_path / "shard_00001.zarr"
    with pytest.raises(OSError, match="disk full"):
        write_shard(other, _records(), {})
    assert not other.exists()


def test_info_and_stats(tmp_path):
    info = make_dataset(tmp_path, episodes=3, episodes_per_shard=2)
    records = [fake_record(s, n_keys=12 + s % 3, family=f) for f in ("straight", "crosswalk") for s in range(3)]
    assert info["schema_version"] == SCHEMA_VERSION
    assert (info["fps"], info["sim_hz"]) == (2.0, 10)
    assert info["counts"] == {
        "episodes": 6,
        "samples": sum(r.num_samples for r in records),
        "frames": sum(len(r.frames) for r in records),
        "shards": 3,
    }
    assert info["seeds"] == {"straight": [0, 1, 2], "crosswalk": [0, 1, 2]}
    assert info["camera_shape"] == [16, 32, 3] and info["bev_shape"] == [10, 16, 16]
    assert info["fields"]["trajectory"] == {"per": "sample", "dtype": "float32", "shape": ["Ns", 8, 3]}
    assert info["generator"]["episodes_per_shard"] == 2
    stats = load_stats(tmp_path)
    traj = np.concatenate([r.trajectory for r in records]).astype(np.float64)
    np.testing.assert_allclose(stats["trajectory"]["mean"], traj.mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["trajectory"]["std"], traj.std(0), rtol=1e-6)
    np.testing.assert_allclose(stats["trajectory"]["max"], traj.max(0))
    speed = np.concatenate([r.ego[:, 3] for r in records]).astype(np.float64)
    np.testing.assert_allclose(stats["ego_speed"]["mean"], speed.mean(), rtol=1e-9)
    residual = traj - np.stack([speed[:, None] * 0.5 * np.arange(1, 9), 0 * traj[..., 1], 0 * traj[..., 2]], -1)
    np.testing.assert_allclose(stats["trajectory_residual"]["mean"], residual.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["trajectory_residual"]["std"], residual.std(0), rtol=1e-5, atol=1e-5)
    assert np.shape(stats["past_trajectory"]["min"]) == (2, 3)


def test_valid_dataset_has_no_problems(dataset_dir):
    assert validate(dataset_dir) == []


@pytest.fixture
def fresh(dataset_dir, tmp_path):
    """A private copy of the shared dataset, to damage."""
    return shutil.copytree(dataset_dir, tmp_path / "ds")


def _problem(problems, *words):
    """The one problem string mentioning all words."""
    hits = [p for p in problems if all(w in p for w in words)]
    assert hits, f"no problem mentions {words}: {problems}"
    return hits[0]


def test_validate_deleted_field(fresh):
    shutil.rmtree(fresh / "shards/shard_00001.zarr/trajectory")
    _problem(validate(fresh), "shard_00001.zarr", "trajectory", "missing")


def test_validate_nan(fresh):
    arr = zarr.open_array(fresh / "shards/shard_00002.zarr/trajectory", mode="r+")
    arr[1, 3, 0] = np.nan
    _problem(validate(fresh), "shard_00002.zarr", "trajectory", "NaN")


def test_validate_truncated_chunk(fresh):
    chunk = fresh / "shards/shard_00000.zarr/frames/c/3/0/0/0"
    chunk.write_bytes(chunk.read_bytes()[:-7])
    _problem(validate(fresh), "shard_00000.zarr", "frames", "unreadable")


def test_validate_deleted_chunk(fresh):
    (fresh / "shards/shard_00000.zarr/bev/c/2/0/0/0").unlink()
    _problem(validate(fresh), "shard_00000.zarr", "bev", "chunk files missing")


def test_validate_ranges(fresh):
    group = zarr.open_group(fresh / "shards/shard_00001.zarr", mode="r+")
    group["lights"][0, 0] = 5
    group["command"][0] = 9
    group["trajectory"][0, 7, 0] = 150.0
    group["key_index"][0] = 0
    group["stop_control"][0] = 4
    group["stop_distance"][1] = 101.0
    problems = validate(fresh)
    for field in ("lights", "command", "trajectory", "key_index", "stop_control", "stop_distance"):
        _problem(problems, "shard_00001.zarr", field)


def test_validate_schema_version_mismatch(fresh):
    info = json.loads((fresh / "info.json").read_text())
    (fresh / "info.json").write_text(json.dumps({**info, "schema_version": "0"}))
    _problem(validate(fresh), "info.json", "'0'", f"'{SCHEMA_VERSION}'")
    with pytest.raises(ValueError, match=f"schema_version '0', expected '{SCHEMA_VERSION}'"):
        load_info(fresh)


def test_validate_counts_and_leftovers(fresh):
    info = json.loads((fresh / "info.json").read_text())
    info["counts"]["samples"] += 1
    (fresh / "info.json").write_text(json.dumps(info))
    (fresh / "shards/shard_00003.zarr.partial").mkdir()
    os.rename(fresh / "shards/shard_00002.zarr", fresh / "shards/shard_00009.zarr")
    problems = validate(fresh)
    _problem(problems, "counts.samples")
    _problem(problems, "shard_00003.zarr.partial", "leftover")
    _problem(problems, "shard_00002.zarr", "missing")
    _problem(problems, "shard_00009.zarr", "not in info.json")


def test_missing_info(tmp_path):
    _problem(validate(tmp_path), "info.json", "not found")
    with pytest.raises(FileNotFoundError, match=r"info\.json"):
        load_info(tmp_path)
