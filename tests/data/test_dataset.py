"""The Dataset serves each sample's frames and labels exactly, splits by episode, and names damaged shards."""

import dataclasses
import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from conftest import BEV_SIZE, fake_record, fake_record_episode, make_dataset
from torch.utils.data import DataLoader

from worlddrive.data.dataset import IMAGE_FIELDS, ITEM_FIELDS, WorldDriveDataset, episode_split
from worlddrive.data.format import LABEL_FIELDS, SCHEMA_VERSION
from worlddrive.data.record import FUTURE, MAX_AGENTS, PAST
from worlddrive.data.show import show
from worlddrive.sim.camera import BEV_CHANNELS


def test_split_is_by_episode_disjoint_and_covering(dataset_dir):
    train = WorldDriveDataset(dataset_dir, "train", val_fraction=0.4)
    val = WorldDriveDataset(dataset_dir, "val", val_fraction=0.4)
    everything = WorldDriveDataset(dataset_dir, "all")
    assert train.episodes and val.episodes
    assert not set(train.episodes) & set(val.episodes)
    assert set(train.episodes) | set(val.episodes) == set(everything.episodes)
    assert len(train) + len(val) == len(everything) == everything.info["counts"]["samples"]


def test_split_does_not_depend_on_sharding(tmp_path):
    val = []
    for per_shard in (1, 4):
        make_dataset(tmp_path / str(per_shard), episodes=6, episodes_per_shard=per_shard)
        val.append(WorldDriveDataset(tmp_path / str(per_shard), "val", val_fraction=0.3).episodes)
    assert val[0] == val[1]
    assert all(episode_split(f, s, 0.3) == "val" for f, s in val[0])


def test_item_matches_the_recorded_episode(dataset_dir):
    ds = WorldDriveDataset(dataset_dir, "all")
    record = fake_record(1, n_keys=13, family="straight")  # shard 0 holds (straight 0, straight 1)
    first = fake_record(0, n_keys=12, family="straight").num_samples
    row = 1
    item = ds[first + row]
    k = int(record.key_index[row])
    H, W = record.frames.shape[1:3]
    expected = {
        "camera": ((PAST + 1, 3, H, W), torch.uint8),
        "future_camera": ((FUTURE, 3, H, W), torch.uint8),
        "bev": ((len(BEV_CHANNELS), BEV_SIZE, BEV_SIZE), torch.uint8),
        "future_bev": ((FUTURE, len(BEV_CHANNELS), BEV_SIZE, BEV_SIZE), torch.uint8),
        "trajectory": ((FUTURE, 3), torch.float32),
        "past_trajectory": ((PAST, 3), torch.float32),
        "ego": ((7,), torch.float32),
        "agents": ((FUTURE + 1, MAX_AGENTS, 7), torch.float32),
        "agent_mask": ((FUTURE + 1, MAX_AGENTS), torch.bool),
        "lights": ((FUTURE + 1,), torch.long),
        "command": ((), torch.long),
        "speed_limit": ((), torch.float32),
        "stop_distance": ((), torch.float32),
        "stop_control": ((), torch.long),
    }
    assert {k: (tuple(v.shape), v.dtype) for k, v in item.items() if torch.is_tensor(v)} == expected
    np.testing.assert_array_equal(item["camera"].permute(0, 2, 3, 1), record.frames[k - PAST : k + 1])
    np.testing.assert_array_equal(item["future_camera"].permute(0, 2, 3, 1), record.frames[k + 1 : k + FUTURE + 1])
    np.testing.assert_array_equal(item["bev"], record.bev[k])
    np.testing.assert_array_equal(item["future_bev"], record.bev[k + 1 : k + FUTURE + 1])
    for name in LABEL_FIELDS:
        np.testing.assert_array_equal(item[name].numpy(), getattr(record, name)[row], err_msg=name)
    assert (item["instruction"], item["reasoning"], item["facts"]) == (
        record.instruction[row],
        record.reasoning[row],
        record.facts[row],
    )
    item["trajectory"] += 1  # items are copies, not views into the cache
    assert torch.equal(ds[first + row]["trajectory"], torch.from_numpy(record.trajectory[row]))


def test_dataloader_workers_and_pickling(dataset_dir):
    ds = WorldDriveDataset(dataset_dir, "all")
    ds[0]  # opens a shard in this process; copies must not carry it along
    clone = pickle.loads(pickle.dumps(ds))
    assert not clone._cache and clone._cached_bytes == 0 and ds._cache
    assert torch.equal(clone[3]["camera"], ds[3]["camera"])
    batches = list(DataLoader(ds, batch_size=4, num_workers=2))
    assert sum(len(b["reasoning"]) for b in batches) == len(ds)
    assert batches[0]["camera"].shape[:2] == (4, PAST + 1)
    assert torch.equal(batches[0]["trajectory"][1], ds[1]["trajectory"])


def assert_same_items(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name, value in a.items():
        assert torch.equal(value, b[name]) if torch.is_tensor(value) else value == b[name], name


def test_cache_eviction_under_a_tiny_budget_gives_identical_items(dataset_dir):
    ds = WorldDriveDataset(dataset_dir, "all")
    order = np.random.default_rng(0).permutation(len(ds))
    reference = [ds[int(i)] for i in order]
    assert len(ds._cache) == len(ds.shard_names)
    largest = max(entry.nbytes for entry in ds._cache.values())
    for budget in (largest, 0):  # room for about one shard; none: every item reads its shard again
        tiny = WorldDriveDataset(dataset_dir, "all", cache_bytes=budget)
        for i, expected in zip(order, reference, strict=True):
            assert_same_items(tiny[int(i)], expected)
            assert tiny._cached_bytes == sum(e.nbytes for e in tiny._cache.values()) <= budget
        assert len(tiny._cache) == (1 if budget else 0) < len(ds.shard_names)

    def unreadable(shard):
        raise AssertionError(f"shard {shard} read again")

    ds._open = unreadable  # a second epoch within the budget reads nothing
    for i, expected in zip(order, reference, strict=True):
        assert_same_items(ds[int(i)], expected)


def test_items_never_alias_the_cache(dataset_dir, tmp_path):
    def grey_bev(family, seed, *args, **kwargs):  # BEV values beyond 0/1 are cached as they are, not bit-packed
        record = fake_record_episode(family, seed)
        return dataclasses.replace(record, bev=record.bev * 200)

    make_dataset(tmp_path / "grey", record_fn=grey_bev)
    for path in (dataset_dir, tmp_path / "grey"):
        ds = WorldDriveDataset(path, "all")
        first = {k: v.clone() if torch.is_tensor(v) else v for k, v in ds[1].items()}
        mutated = ds[1]
        for name in IMAGE_FIELDS:  # the only fields sliced from cached arrays
            mutated[name] += 1
        assert_same_items(ds[1], first)
    assert ds._cache[0].bev_width == 0 and first["bev"].max() == 200


def test_fields_skip_what_the_caller_does_not_use(dataset_dir):
    full = WorldDriveDataset(dataset_dir, "all")
    assert full.fields == ITEM_FIELDS
    action_only = WorldDriveDataset(dataset_dir, "all", fields=WorldDriveDataset.fields_for([""]))  # --wm ""
    item = action_only[5]
    assert not {"future_camera", "bev", "future_bev"} & set(item)
    assert_same_items(item, {k: v for k, v in full[5].items() if k in item})
    shard = int(full._shard[5])
    assert action_only._cache[shard].bev is None  # the BEV is never read
    assert action_only._cached_bytes < full._cached_bytes
    assert WorldDriveDataset.fields_for(["frame", "bev"]) == tuple(f for f in ITEM_FIELDS if f != "bev")
    assert WorldDriveDataset.fields_for(["vq"]) == tuple(f for f in ITEM_FIELDS if f not in ("bev", "future_bev"))
    only_bev = WorldDriveDataset(dataset_dir, "all", fields=("future_bev", "bev"))
    assert_same_items(only_bev[5], {"bev": full[5]["bev"], "future_bev": full[5]["future_bev"]})
    assert only_bev._cache[shard].frames is None
    with pytest.raises(ValueError, match=r"unknown world-model heads \['lidar'\]"):
        WorldDriveDataset.fields_for(["bev", "lidar"])
    with pytest.raises(ValueError, match=r"unknown fields \['depth'\]"):
        WorldDriveDataset(dataset_dir, fields=("camera", "depth"))


@pytest.fixture
def fresh(dataset_dir, tmp_path):
    return shutil.copytree(dataset_dir, tmp_path / "ds")


def test_damaged_shard_is_named(fresh):
    ds = WorldDriveDataset(fresh, "all")
    chunk = fresh / "shards/shard_00000.zarr/frames/c/2/0/0/0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    with pytest.raises(RuntimeError, match=r"shard .*shard_00000\.zarr is damaged: cannot read frames"):
        ds[0]
    (fresh / "shards/shard_00001.zarr/agents/c/0/0/0/0").unlink()
    first_of_shard_1 = sum(ds.info["shards"][0]["episode_samples"])
    with pytest.raises(RuntimeError, match=r"shard .*shard_00001\.zarr is damaged: agents is missing chunk files"):
        ds[first_of_shard_1]


def test_schema_mismatch_and_bad_arguments(fresh):
    info = json.loads((fresh / "info.json").read_text())
    (fresh / "info.json").write_text(json.dumps({**info, "schema_version": "0"}))
    with pytest.raises(ValueError, match=f"schema_version '0', expected '{SCHEMA_VERSION}'"):
        WorldDriveDataset(fresh)
    with pytest.raises(ValueError, match="split must be one of"):
        WorldDriveDataset(fresh, split="test")
    with pytest.raises(FileNotFoundError, match=r"info\.json not found"):
        WorldDriveDataset(fresh / "nowhere")


def test_show(dataset_dir, tmp_path):
    png = tmp_path / "sheet.png"
    text = show(dataset_dir, png, n=5)
    assert "6 episodes" in text and "straight" in text and "crosswalk" in text
    assert "mean ego speed" in text and "light ahead now: none" in text and "mean reasoning length" in text
    assert png.stat().st_size > 10_000
