"""PyTorch view of a generated dataset: one item per sample, split into train/val by episode.

The split hashes (family, seed), so an episode lands on the same side whatever the shard size or the number of
episodes generated, and no episode's frames leak from train into val. Zarr arrays are opened lazily, once per
process, so the dataset is safe to copy into DataLoader workers. A shard's per-sample arrays are small (one chunk
each) and are read whole and kept in a small LRU cache; images are read per sample as one slice of consecutive frames.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from types import EllipsisType
from typing import Any

import numpy as np
import torch
import zarr
from torch.utils.data import Dataset

from worlddrive.data.format import LABEL_FIELDS, SHARDS, TEXT_FIELDS, load_info, load_stats, open_shard
from worlddrive.data.record import FUTURE, PAST

SPLITS = ("train", "val", "all")


def episode_split(family: str, seed: int, val_fraction: float) -> str:
    """'val' for a stable pseudo-random `val_fraction` of episodes, else 'train'."""
    digest = hashlib.sha256(f"{family}/{seed}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


class WorldDriveDataset(Dataset):
    """Samples of a dataset folder. Items are dicts of tensors (see `__getitem__`) plus the three texts."""

    def __init__(self, path: str | Path, split: str = "train", val_fraction: float = 0.1, cache_shards: int = 32):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not 0.0 <= val_fraction <= 1.0:
            raise ValueError(f"val_fraction must be within [0, 1], got {val_fraction}")
        self.root = Path(path)
        self.info = load_info(self.root)
        self.stats = load_stats(self.root)
        self.split, self.cache_shards = split, cache_shards
        self.shard_names = [s["name"] for s in self.info["shards"]]
        # (family, seed) of the split's episodes; item -> shard, row in the shard  (N,), (N,)
        self.episodes, self._shard, self._row, counts = self._index(split, val_fraction)
        self.item_episode = np.repeat(np.arange(len(self.episodes)), counts)  # (N,) index into self.episodes
        self._images: dict[int, tuple[zarr.Array, zarr.Array]] = {}  # opened frames and bev arrays per shard
        self._samples: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()  # per-sample arrays, LRU

    def _index(self, split: str, val_fraction: float) -> tuple[list[tuple[str, int]], np.ndarray, np.ndarray, list]:
        """The split's episodes, its items as (shard, row) pairs and samples per episode, from info.json alone."""
        episodes, shards, rows, counts = [], [np.zeros(0, np.int32)], [np.zeros(0, np.int32)], []
        for i, entry in enumerate(self.info["shards"]):
            start = 0
            for (family, seed), n in zip(entry["episodes"], entry["episode_samples"], strict=True):
                if split == "all" or episode_split(family, seed, val_fraction) == split:
                    episodes.append((family, seed))
                    counts.append(n)
                    shards.append(np.full(n, i, np.int32))
                    rows.append(np.arange(start, start + n, dtype=np.int32))
                start += n
        return episodes, np.concatenate(shards), np.concatenate(rows), counts

    def __len__(self) -> int:
        return len(self._shard)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without open arrays or cache: each worker process opens its own."""
        return {**self.__dict__, "_images": {}, "_samples": OrderedDict()}

    def __getitem__(self, i: int) -> dict[str, Any]:
        shard, row = int(self._shard[i]), int(self._row[i])
        s = self._sample_arrays(shard)
        k = int(s["key_index"][row])
        frames, bev = self._window(shard, k)  # (PAST + 1 + FUTURE, H, W, 3), (PAST + 1 + FUTURE, C, Hb, Wb)
        camera = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))  # (T, 3, H, W) oldest first
        bev = torch.from_numpy(bev)
        item = {
            "camera": camera[: PAST + 1],
            "future_camera": camera[PAST + 1 :],
            "bev": bev[PAST],
            "future_bev": bev[PAST + 1 :],
            **{name: torch.tensor(s[name][row]) for name in LABEL_FIELDS},
            **{name: str(s[name][row]) for name in TEXT_FIELDS},
        }
        item["command"] = item["command"].long()
        item["lights"] = item["lights"].long()
        return item

    def _shard_path(self, shard: int) -> Path:
        return self.root / SHARDS / self.shard_names[shard]

    def _sample_arrays(self, shard: int) -> dict[str, np.ndarray]:
        """All per-sample arrays of a shard, read once and kept for the next `cache_shards` shards."""
        if shard in self._samples:
            self._samples.move_to_end(shard)
        else:
            arrays = self._open(shard)
            self._images[shard] = arrays["frames"], arrays["bev"]
            self._samples[shard] = {
                name: self._read(shard, arrays[name], ...) for name in ("key_index", *LABEL_FIELDS, *TEXT_FIELDS)
            }
            if len(self._samples) > self.cache_shards:
                self._samples.popitem(last=False)
        return self._samples[shard]

    def _window(self, shard: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Camera and BEV frames k - PAST ... k + FUTURE of a shard opened by `_sample_arrays`."""
        rows = slice(k - PAST, k + FUTURE + 1)
        frames, bev = (self._read(shard, arr, rows) for arr in self._images[shard])
        return frames, bev

    def _open(self, shard: int) -> dict[str, zarr.Array]:
        """A shard's arrays; refuses the shard if a chunk file is missing (zarr would read zeros in its place)."""
        path = self._shard_path(shard)
        arrays = dict(open_shard(path).arrays())
        for name, arr in arrays.items():
            if arr.nchunks_initialized != arr.nchunks:
                raise RuntimeError(f"shard {path} is damaged: {name} is missing chunk files; run validate")
        return arrays

    def _read(self, shard: int, arr: zarr.Array, rows: slice | EllipsisType) -> np.ndarray:
        try:
            return arr[rows]
        except Exception as e:
            raise RuntimeError(
                f"shard {self._shard_path(shard)} is damaged: cannot read {arr.basename} ({e}); run validate"
            ) from e
