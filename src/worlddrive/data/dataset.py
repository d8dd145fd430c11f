"""PyTorch view of a generated dataset: one item per sample, split into train/val by episode.

The split hashes (family, seed), so an episode lands on the same side whatever the shard size or the number of
episodes generated, and no episode's frames leak from train into val. Zarr arrays are opened lazily, once per
process, so the dataset is safe to copy into DataLoader workers.

Reading is the cost of a training step's data (zarr's per-call overhead and zstd, ~20 ms a sample), so a shard's
arrays are read whole, decompressed once per process, and kept in an LRU cache bounded by `cache_bytes`: an item is
then a few slices and copies (under 1 ms), and a second epoch reads nothing. The first item of a shard pays for all
of it (~0.1 s), so this pays off from about one epoch on, not in a run that touches each shard only a few times.
BEV rasters are 0/1 masks, kept bit-packed (8x smaller; unpacking a window is cheaper than one zarr call): all of a
14k-sample dataset takes 2.0 GiB. Callers that do not use every image field name the ones they do (`fields`,
`fields_for`): an action-only policy never reads, caches or copies future frames or BEV rasters.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import zarr
from torch.utils.data import Dataset

from worlddrive.data.format import LABEL_FIELDS, SHARDS, TEXT_FIELDS, load_info, load_stats, open_shard
from worlddrive.data.record import FUTURE, PAST

SPLITS = ("train", "val", "all")
IMAGE_FIELDS = ("camera", "future_camera", "bev", "future_bev")
ITEM_FIELDS = (*IMAGE_FIELDS, *LABEL_FIELDS, *TEXT_FIELDS)  # an item's keys, in order, when all are served
HEAD_FIELDS = {"vq": "future_camera", "frame": "future_camera", "bev": "future_bev"}  # what each world-model head reads
CACHE_BYTES = 4 * 2**30  # default budget of decompressed shards per dataset and process


def data_roots(text: str) -> list[tuple[str, int]]:
    """`train --data`'s folders with how often each counts in the training split: `DIR*K` draws DIR's samples K times
    (a small DAgger set weighed up among large expert sets); the val split counts each folder once."""
    roots = []
    for item in (d.strip() for d in text.split(",") if d.strip()):
        root, _, times = item.rpartition("*") if "*" in item else (item, "", "1")
        if not (times.isdigit() and int(times) >= 1 and root):
            raise ValueError(f"--data {item!r}: a folder, or FOLDER*K with a whole number K >= 1")
        roots.append((root, int(times)))
    if not roots:
        raise ValueError("--data names no dataset folder")
    return roots


def episode_split(family: str, seed: int, val_fraction: float) -> str:
    """'val' for a stable pseudo-random `val_fraction` of episodes, else 'train'."""
    digest = hashlib.sha256(f"{family}/{seed}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


class _Shard(NamedTuple):
    """A shard's arrays as served, decompressed: one entry of the cache."""

    samples: dict[str, np.ndarray]  # key_index and the served labels and texts, (Ns, ...)
    frames: np.ndarray | None  # (Nf, H, W, 3) uint8; None when no camera field is served
    bev: np.ndarray | None  # (Nf, C, Hb, Wb) uint8, or bit-packed (Nf, C, Hb, ceil(Wb / 8)); None when not served
    bev_width: int  # Wb when `bev` is bit-packed, else 0
    nbytes: int  # strings counted by their 16-byte headers: texts are ~0.3 % of a shard


class WorldDriveDataset(Dataset):
    """Samples of a dataset folder. Items are dicts of tensors (see `__getitem__`) plus the three texts.

    `fields`: the item keys to serve, a subset of ITEM_FIELDS (None: all); `cache_bytes`: the budget of decompressed
    shards this dataset keeps per process, least recently used shard evicted first. It should hold at least one
    shard (~25 MB on the default camera), else every item reads its whole shard again.
    """

    def __init__(
        self,
        path: str | Path,
        split: str = "train",
        val_fraction: float = 0.1,
        fields: Iterable[str] | None = None,
        cache_bytes: int = CACHE_BYTES,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not 0.0 <= val_fraction <= 1.0:
            raise ValueError(f"val_fraction must be within [0, 1], got {val_fraction}")
        wanted = set(ITEM_FIELDS if fields is None else fields)
        if not wanted <= set(ITEM_FIELDS):
            raise ValueError(f"unknown fields {sorted(wanted - set(ITEM_FIELDS))}; fields are {ITEM_FIELDS}")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        self.root = Path(path)
        self.info = load_info(self.root)
        self.stats = load_stats(self.root)
        self.split, self.cache_bytes = split, cache_bytes
        self.fields = tuple(f for f in ITEM_FIELDS if f in wanted)
        self.shard_names = [s["name"] for s in self.info["shards"]]
        # (family, seed) of the split's episodes; item -> shard, row in the shard  (N,), (N,)
        self.episodes, self._shard, self._row, counts = self._index(split, val_fraction)
        self.item_episode = np.repeat(np.arange(len(self.episodes)), counts)  # (N,) index into self.episodes
        self._cache: OrderedDict[int, _Shard] = OrderedDict()  # decompressed shards, least recently used first
        self._cached_bytes = 0

    @staticmethod
    def fields_for(wm_heads: Iterable[str]) -> tuple[str, ...]:
        """The fields a `WorldDrivePolicy` with these world-model heads reads (empty names are ignored, so
        `"frame,bev".split(",")` and `"".split(",")` both work): the camera, labels and texts, plus future_camera
        for the vq and frame heads and future_bev for the bev head. No policy reads the current BEV."""
        heads = {h for h in wm_heads if h}
        if not heads <= HEAD_FIELDS.keys():
            raise ValueError(f"unknown world-model heads {sorted(heads - HEAD_FIELDS.keys())}; heads are {HEAD_FIELDS}")
        used = {"camera", *(HEAD_FIELDS[h] for h in heads)}
        return tuple(f for f in ITEM_FIELDS if f not in IMAGE_FIELDS or f in used)

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
        """Pickle without the cache: each worker process reads and keeps its own."""
        return {**self.__dict__, "_cache": OrderedDict(), "_cached_bytes": 0}

    def __getitem__(self, i: int) -> dict[str, Any]:
        """The served fields of sample i, copies that never alias the cache: camera (PAST + 1, 3, H, W) and
        future_camera (FUTURE, 3, H, W) oldest first, bev (C, Hb, Wb) and future_bev (FUTURE, C, Hb, Wb) uint8,
        the labels as tensors (command and lights long) and the texts as str."""
        shard, row = int(self._shard[i]), int(self._row[i])
        s = self._shard_arrays(shard)
        k = int(s.samples["key_index"][row])
        item: dict[str, Any] = {}  # may hold fields that are not served: dropped on return
        if s.frames is not None:
            stop = k + 1 + (FUTURE if "future_camera" in self.fields else 0)
            camera = torch.from_numpy(np.ascontiguousarray(s.frames[k - PAST : stop].transpose(0, 3, 1, 2)))
            item["camera"], item["future_camera"] = camera[: PAST + 1], camera[PAST + 1 :]  # (T, 3, H, W)
        if s.bev is not None:
            start = k if "bev" in self.fields else k + 1
            stop = k + 1 + (FUTURE if "future_bev" in self.fields else 0)
            bev = torch.from_numpy(self._bev_rows(s, start, stop))  # (stop - start, C, Hb, Wb)
            item["bev"], item["future_bev"] = bev[k - start], bev[k + 1 - start :]
        for name in LABEL_FIELDS:
            if name in self.fields:
                item[name] = torch.tensor(s.samples[name][row])
        for name in TEXT_FIELDS:
            if name in self.fields:
                item[name] = str(s.samples[name][row])
        for name in ("command", "lights", "stop_control"):
            if name in item:
                item[name] = item[name].long()
        return {name: item[name] for name in self.fields}

    @staticmethod
    def _bev_rows(s: _Shard, start: int, stop: int) -> np.ndarray:
        """BEV rows start ... stop - 1 as a fresh (stop - start, C, Hb, Wb) uint8 array."""
        if s.bev_width:
            return np.unpackbits(s.bev[start:stop], axis=-1, count=s.bev_width)
        return s.bev[start:stop].copy()

    def _shard_path(self, shard: int) -> Path:
        return self.root / SHARDS / self.shard_names[shard]

    def _shard_arrays(self, shard: int) -> _Shard:
        """A shard's served arrays, from the cache or read whole; least recently used shards make room."""
        entry = self._cache.get(shard)
        if entry is not None:
            self._cache.move_to_end(shard)
            return entry
        entry = self._load(shard)
        if entry.nbytes <= self.cache_bytes:
            while self._cached_bytes + entry.nbytes > self.cache_bytes:
                self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
            self._cache[shard] = entry
            self._cached_bytes += entry.nbytes
        return entry

    def _load(self, shard: int) -> _Shard:
        """Read and decompress the arrays the served fields need, each whole, in one call per array."""
        arrays = self._open(shard)
        names = ("key_index", *(f for f in (*LABEL_FIELDS, *TEXT_FIELDS) if f in self.fields))
        samples = {name: self._read(shard, arrays[name]) for name in names}
        frames = bev = None
        if {"camera", "future_camera"} & set(self.fields):
            frames = self._read(shard, arrays["frames"])  # (Nf, H, W, 3)
        bev_width = 0
        if {"bev", "future_bev"} & set(self.fields):
            bev = self._read(shard, arrays["bev"])  # (Nf, C, Hb, Wb)
            if bev.dtype == np.uint8 and bev.max(initial=0) <= 1:
                bev, bev_width = np.packbits(bev, axis=-1), bev.shape[-1]
        nbytes = sum(a.nbytes for a in (*samples.values(), frames, bev) if a is not None)
        return _Shard(samples, frames, bev, bev_width, nbytes)

    def _open(self, shard: int) -> dict[str, zarr.Array]:
        """A shard's arrays; refuses the shard if a chunk file is missing (zarr would read zeros in its place)."""
        path = self._shard_path(shard)
        arrays = dict(open_shard(path).arrays())
        for name, arr in arrays.items():
            if arr.nchunks_initialized != arr.nchunks:
                raise RuntimeError(f"shard {path} is damaged: {name} is missing chunk files; run validate")
        return arrays

    def _read(self, shard: int, arr: zarr.Array) -> np.ndarray:
        try:
            return arr[...]
        except Exception as e:
            raise RuntimeError(
                f"shard {self._shard_path(shard)} is damaged: cannot read {arr.basename} ({e}); run validate"
            ) from e
