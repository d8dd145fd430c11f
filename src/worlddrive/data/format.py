"""Shards on disk: a zarr v3 group per few episodes, plus `info.json` and `stats.json` (DESIGN.md "Data").

Why zarr v3 rather than Arrow/Parquet: most of the bytes are multi-dimensional uint8 images. Zarr keeps them as
N-d arrays with their shape and dtype, chunked a few frames per chunk, so a sample's 11 camera frames are one sliced
read of 3-4 small chunks, with no row group to decode first. Parquet would hold an image as an opaque bytes cell and
read a whole row group to reach one sample. A shard is a plain folder of files that any node of a cluster can read
(no server, no database), and zarr v3 is a maintained, written specification with readers beyond Python.

Layout of `DIR/shards/shard_00012.zarr` (E episodes concatenated: Nf frames, Ns samples):
  frames, bev        (Nf, H, W, 3), (Nf, C, Hb, Wb) uint8, FRAMES_PER_CHUNK frames per chunk; an episode's first
                     PAST rows repeat its first keyframe (the past a policy has at an episode's start, record.py)
  key_index          (Ns,) row of the sample's "now" in frames/bev. Rows key_index - PAST ... key_index + FUTURE all
                     belong to the sample's episode by construction (record.py), so no validity masks are stored
  episode            (Ns,) row of the sample's episode in the episode_* arrays
  ego ... stop_control  (Ns, ...) as in `EpisodeRecord`
  instruction, reasoning, facts  (Ns,) zarr v3 variable-length UTF-8 strings (`dtype=str`, codec vlen-utf8)
  episode_family     (E,) index into attrs["families"]; episode_seed, episode_frame_start, episode_num_frames
Per-sample and per-episode arrays are a single chunk: a reader loads them once per shard and keeps them.
Group attrs: schema_version, episodes [[family, seed], ...], families, config (camera, BEV and perturb settings),
episode_samples, episode_frames, and partial sums from which `stats.json` is merged without rereading any array.

Atomicity: a shard is written into `shard_XXXXX.zarr.partial/` and renamed when complete; a finished shard is never
overwritten. This survives killed processes (kill -9); files are not fsynced, so after a power cut run `validate`.
Chunks are zstd-compressed with a checksum and written even when empty, so a truncated, corrupted or missing chunk
file is detected rather than read back as zeros.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from worlddrive.data.record import AGENT_FIELDS, COMMANDS, FUTURE, KEY_EVERY, MAX_AGENTS, PAST, EpisodeRecord
from worlddrive.fileio import write_json_atomic
from worlddrive.sim.state import CONTROL_NAMES, EGO_SPEED, LIGHT_NAMES, STOP_HORIZON
from worlddrive.sim.vehicle import DT, WAYPOINT_TIMES

SCHEMA_VERSION = "3"  # 2: stop_distance, stop_control; 3: a served stop sign's line no longer reported
SHARDS = "shards"  # sub-folder of the dataset holding the shards
PARTIAL = ".partial"  # suffix of a shard still being written
SIM_HZ = round(1 / DT)
FPS = SIM_HZ / KEY_EVERY
MAX_METRES = 120.0  # |x|, |y| bound of trajectory waypoints, ego frame
MAX_SPEED = 40.0  # m/s bound of ego, agent and limit speeds
TEXT_FIELDS = ("instruction", "reasoning", "facts")
LABEL_FIELDS = (
    "ego",
    "trajectory",
    "past_trajectory",
    "agents",
    "agent_mask",
    "lights",
    "command",
    "speed_limit",
    "stop_distance",
    "stop_control",
)
# trajectory_residual: the trajectory minus driving straight on at the current speed (PolicyConfig.plan_residual)
STAT_FIELDS = ("trajectory", "trajectory_residual", "past_trajectory", "ego_speed")
FRAMES_PER_CHUNK = 4  # vs 1: writes 3x faster, reads a sample's window 2x faster, 3x smaller (measured)
_ZSTD = ZstdCodec(level=1, checksum=True)


class Field(NamedTuple):
    """One array of a shard."""

    per: str  # leading dimension: "frame" (Nf), "sample" (Ns) or "episode" (E)
    dtype: str  # numpy dtype name, or "str" for variable-length UTF-8
    shape: tuple[int, ...]  # trailing shape after the leading dimension


def fields(camera_shape: tuple[int, ...], bev_shape: tuple[int, ...]) -> dict[str, Field]:
    """Every array of a shard; image sizes come from the camera and BEV settings of the run."""
    t = FUTURE + 1  # time steps 0 ... 4 s
    return {
        "frames": Field("frame", "uint8", tuple(camera_shape)),
        "bev": Field("frame", "uint8", tuple(bev_shape)),
        "key_index": Field("sample", "int32", ()),
        "episode": Field("sample", "int32", ()),
        "ego": Field("sample", "float32", (7,)),
        "trajectory": Field("sample", "float32", (FUTURE, 3)),
        "past_trajectory": Field("sample", "float32", (PAST, 3)),
        "agents": Field("sample", "float32", (t, MAX_AGENTS, len(AGENT_FIELDS))),
        "agent_mask": Field("sample", "bool", (t, MAX_AGENTS)),
        "lights": Field("sample", "int8", (t,)),
        "command": Field("sample", "int8", ()),
        "speed_limit": Field("sample", "float32", ()),
        "stop_distance": Field("sample", "float32", ()),
        "stop_control": Field("sample", "int8", ()),
        **{name: Field("sample", "str", ()) for name in TEXT_FIELDS},
        "episode_family": Field("episode", "int16", ()),
        "episode_seed": Field("episode", "int64", ()),
        "episode_frame_start": Field("episode", "int64", ()),
        "episode_num_frames": Field("episode", "int32", ()),
    }


# --------------------------------------------------------------------------------------------------------------------
# Writing


def partial_path(shard: Path) -> Path:
    return shard.with_name(shard.name + PARTIAL)


def write_shard(path: Path, records: list[EpisodeRecord], config: dict[str, Any]) -> dict[str, Any]:
    """Write episodes as one shard: build `<path>.partial`, then rename it, so `path` exists only when complete.

    Returns the shard's attrs. Raises FileExistsError rather than overwrite a finished shard.
    """
    if path.exists():
        raise FileExistsError(f"shard {path} already exists; refusing to overwrite a finished shard")
    partial = partial_path(path)
    if partial.exists():
        shutil.rmtree(partial)  # left by a killed writer
    arrays = _concat(records)
    attrs = {
        "schema_version": SCHEMA_VERSION,
        "episodes": [[r.family, int(r.seed)] for r in records],
        "families": list(dict.fromkeys(r.family for r in records)),
        "config": config,
        "episode_samples": [r.num_samples for r in records],
        "episode_frames": [len(r.frames) for r in records],
        "stats": _partial_stats(arrays),
    }
    group = zarr.open_group(partial, mode="w", zarr_format=3, attributes=attrs)
    for name, field in fields(arrays["frames"].shape[1:], arrays["bev"].shape[1:]).items():
        _write_array(group, name, field, arrays[name])
    os.replace(partial, path)
    return attrs


def _concat(records: list[EpisodeRecord]) -> dict[str, np.ndarray]:
    """Episodes -> shard arrays; key_index is rebased from the episode's keyframes to the shard's frame rows."""
    num_frames = np.array([len(r.frames) for r in records], np.int64)
    start = np.concatenate([[0], np.cumsum(num_frames)[:-1]])
    families = list(dict.fromkeys(r.family for r in records))
    return {
        "frames": np.concatenate([r.frames for r in records]),  # (Nf, H, W, 3)
        "bev": np.concatenate([r.bev for r in records]),  # (Nf, C, Hb, Wb)
        "key_index": np.concatenate([r.key_index + s for r, s in zip(records, start, strict=True)]),  # (Ns,)
        "episode": np.concatenate([np.full(r.num_samples, i) for i, r in enumerate(records)]),  # (Ns,)
        **{name: np.concatenate([getattr(r, name) for r in records]) for name in LABEL_FIELDS},
        **{
            name: np.array([t for r in records for t in getattr(r, name)], dtype=np.dtypes.StringDType())
            for name in TEXT_FIELDS
        },
        "episode_family": np.array([families.index(r.family) for r in records]),  # (E,)
        "episode_seed": np.array([r.seed for r in records]),
        "episode_frame_start": start,
        "episode_num_frames": num_frames,
    }


def _write_array(group: zarr.Group, name: str, field: Field, data: np.ndarray) -> None:
    rows = FRAMES_PER_CHUNK if field.per == "frame" else max(len(data), 1)
    arr = group.create_array(
        name,
        shape=data.shape,
        chunks=(rows, *field.shape),
        dtype=str if field.dtype == "str" else field.dtype,
        compressors=_ZSTD,
        config={"write_empty_chunks": True},  # a missing chunk file then always means damage
    )
    arr[...] = data if field.dtype == "str" else data.astype(field.dtype, copy=False)


def _stat_values(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    speed = arrays["ego"][:, EGO_SPEED]  # (Ns,)
    residual = arrays["trajectory"].copy()  # (Ns, W, 3)
    residual[..., 0] -= speed[:, None] * WAYPOINT_TIMES  # minus driving straight on at the current speed
    return {
        "trajectory": arrays["trajectory"],
        "trajectory_residual": residual,
        "past_trajectory": arrays["past_trajectory"],
        "ego_speed": speed,
    }


def _partial_stats(arrays: dict[str, np.ndarray]) -> dict[str, dict]:
    """Sums per shard, so stats.json is merged from attrs instead of rereading every shard."""
    out = {}
    for name, v in _stat_values(arrays).items():
        v = v.astype(np.float64)
        if len(v):
            out[name] = {
                "count": len(v),
                "sum": v.sum(0).tolist(),
                "sumsq": (v**2).sum(0).tolist(),
                "min": v.min(0).tolist(),
                "max": v.max(0).tolist(),
            }
    return out


def merge_stats(parts: list[dict[str, dict]]) -> dict[str, Any]:
    """Mean/std/min/max per element (e.g. per waypoint and x/y/yaw) over all shards, for normalisation."""
    out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    for name in STAT_FIELDS:
        ps = [p[name] for p in parts if name in p]
        if not ps:
            out[name] = None
            continue
        n = sum(p["count"] for p in ps)
        mean = np.sum([p["sum"] for p in ps], 0) / n
        var = np.sum([p["sumsq"] for p in ps], 0) / n - mean**2
        out[name] = {
            "count": n,
            "mean": mean.tolist(),
            "std": np.sqrt(np.maximum(var, 0)).tolist(),
            "min": np.min([p["min"] for p in ps], 0).tolist(),
            "max": np.max([p["max"] for p in ps], 0).tolist(),
        }
    return out


def write_metadata(root: Path, generator: dict[str, Any]) -> dict[str, Any]:
    """Write stats.json, then info.json (its presence marks a finished dataset), from the shards' attrs."""
    paths = shard_paths(root)
    groups = [open_shard(p) for p in paths]
    attrs = [dict(g.attrs) for g in groups]
    write_json_atomic(root / "stats.json", merge_stats([a["stats"] for a in attrs]))
    camera_shape = list(groups[0]["frames"].shape[1:]) if groups else None
    bev_shape = list(groups[0]["bev"].shape[1:]) if groups else None
    episodes = [tuple(e) for a in attrs for e in a["episodes"]]
    families = list(dict.fromkeys(f for f, _ in episodes))
    leading = {"frame": "Nf", "sample": "Ns", "episode": "E"}
    info = {
        "schema_version": SCHEMA_VERSION,
        "counts": {
            "episodes": len(episodes),
            "samples": sum(sum(a["episode_samples"]) for a in attrs),
            "frames": sum(sum(a["episode_frames"]) for a in attrs),
            "shards": len(paths),
        },
        "fps": FPS,
        "sim_hz": SIM_HZ,
        "past": PAST,
        "future": FUTURE,
        "families": families,
        "seeds": {f: [s for g, s in episodes if g == f] for f in families},
        "camera_shape": camera_shape,
        "bev_shape": bev_shape,
        "fields": {
            name: {"per": f.per, "dtype": f.dtype, "shape": [leading[f.per], *f.shape]}
            for name, f in fields(camera_shape or (), bev_shape or ()).items()
        },
        "generator": generator,
        "shards": [
            {
                "name": p.name,
                "episodes": a["episodes"],
                "episode_samples": a["episode_samples"],
                "episode_frames": a["episode_frames"],
            }
            for p, a in zip(paths, attrs, strict=True)
        ],
    }
    write_json_atomic(root / "info.json", info)
    return info


# --------------------------------------------------------------------------------------------------------------------
# Reading


def shard_paths(root: Path) -> list[Path]:
    """Finished shards in name order (a `.partial` folder does not match)."""
    return sorted((Path(root) / SHARDS).glob("shard_*.zarr"))


def _check_version(found: Any, where: Path) -> None:
    if found != SCHEMA_VERSION:
        raise ValueError(
            f"{where} has schema_version {found!r}, expected {SCHEMA_VERSION!r}; "
            "regenerate the dataset with this version of worlddrive"
        )


def load_json(path: Path) -> dict[str, Any]:
    """info.json or stats.json, checked for the schema version."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a WorldDrive dataset, or its generation has not finished")
    obj = json.loads(path.read_text())
    _check_version(obj.get("schema_version"), path)
    return obj


def load_info(root: Path) -> dict[str, Any]:
    return load_json(Path(root) / "info.json")


def load_stats(root: Path) -> dict[str, Any]:
    return load_json(Path(root) / "stats.json")


def open_shard(path: Path) -> zarr.Group:
    """Open a finished shard read-only; errors name the shard."""
    if not path.is_dir():
        raise FileNotFoundError(f"shard {path} not found")
    try:
        group = zarr.open_group(path, mode="r", zarr_format=3)
    except Exception as e:
        raise ValueError(f"shard {path} cannot be opened: {e}") from e
    _check_version(group.attrs.get("schema_version"), path)
    return group


def read_shard(path: Path) -> list[EpisodeRecord]:
    """A shard back as the episodes it was written from (the inverse of `write_shard`)."""
    group = open_shard(path)
    a = {name: arr[...] for name, arr in group.arrays()}
    families = group.attrs["families"]
    records = []
    for e, (start, n) in enumerate(zip(a["episode_frame_start"], a["episode_num_frames"], strict=True)):
        rows = a["episode"] == e
        records.append(
            EpisodeRecord(
                family=families[a["episode_family"][e]],
                seed=int(a["episode_seed"][e]),
                frames=a["frames"][start : start + n],
                bev=a["bev"][start : start + n],
                key_index=a["key_index"][rows] - start.astype(np.int32),
                **{name: a[name][rows] for name in LABEL_FIELDS},
                **{name: a[name][rows].tolist() for name in TEXT_FIELDS},
            )
        )
    return records


# --------------------------------------------------------------------------------------------------------------------
# Validation


def validate(path: Path) -> list[str]:
    """Every problem of a dataset as 'where: field: what'; an empty list means it is sound.

    Reads every array of every shard, so it also finds damaged chunk files.
    """
    root = Path(path)
    problems = [
        f"{p.name}: leftover partial shard (rerun generate to finish it)"
        for p in sorted((root / SHARDS).glob("*" + PARTIAL))
    ]
    try:
        info = load_info(root)
    except (OSError, ValueError) as e:
        return [*problems, f"info.json: {e}"]
    problems += _check_listing(root, info)
    camera_shape, bev_shape = tuple(info["camera_shape"] or ()), tuple(info["bev_shape"] or ())
    for entry in info["shards"]:
        shard = root / SHARDS / entry["name"]
        if shard.is_dir():
            problems += [f"{shard.name}: {p}" for p in _check_shard(shard, entry, camera_shape, bev_shape)]
    return problems


def _check_listing(root: Path, info: dict[str, Any]) -> list[str]:
    """Shards on disk are the shards in info.json, and info.json's counts are their sums."""
    listed = [s["name"] for s in info["shards"]]
    on_disk = [p.name for p in shard_paths(root)]
    problems = [f"{n}: listed in info.json but missing" for n in listed if n not in on_disk]
    problems += [f"{n}: on disk but not in info.json" for n in on_disk if n not in listed]
    sums = {
        "episodes": sum(len(s["episodes"]) for s in info["shards"]),
        "samples": sum(sum(s["episode_samples"]) for s in info["shards"]),
        "frames": sum(sum(s["episode_frames"]) for s in info["shards"]),
        "shards": len(listed),
    }
    return problems + [
        f"info.json: counts.{k} is {info['counts'].get(k)} but the shards hold {v}"
        for k, v in sums.items()
        if info["counts"].get(k) != v
    ]


def _check_shard(path: Path, entry: dict[str, Any], camera_shape: tuple, bev_shape: tuple) -> list[str]:
    try:
        group = open_shard(path)
    except (OSError, ValueError) as e:
        return [f"(shard): {e}"]
    attrs = dict(group.attrs)
    problems = [
        f"attrs.{k}: {attrs.get(k)} differs from info.json {entry[k]}"
        for k in ("episodes", "episode_samples", "episode_frames")
        if attrs.get(k) != entry[k]
    ]
    lengths = {
        "frame": sum(entry["episode_frames"]),
        "sample": sum(entry["episode_samples"]),
        "episode": len(entry["episodes"]),
    }
    stored = dict(group.arrays())
    data = {}
    for name, field in fields(camera_shape, bev_shape).items():
        found, problem = _read_field(stored.get(name), field, lengths[field.per])
        if problem:
            problems.append(f"{name}: {problem}")
        else:
            data[name] = found
    return problems or _check_episodes(data, attrs) or _check_values(data)


def _read_field(arr: zarr.Array | None, field: Field, length: int) -> tuple[np.ndarray | None, str | None]:
    """The array's data, or a description of why it cannot be trusted."""
    if arr is None:
        return None, "missing"
    dtype = "str" if arr.dtype.kind in "OTU" else arr.dtype.name
    if dtype != field.dtype:
        return None, f"dtype {dtype}, expected {field.dtype}"
    if tuple(arr.shape) != (length, *field.shape):
        return None, f"shape {tuple(arr.shape)}, expected {(length, *field.shape)}"
    if arr.nchunks_initialized != arr.nchunks:
        return None, f"{arr.nchunks - arr.nchunks_initialized} of {arr.nchunks} chunk files missing"
    try:
        return arr[...], None
    except Exception as e:
        return None, f"unreadable ({type(e).__name__}: {e})"


def _check_episodes(a: dict[str, np.ndarray], attrs: dict[str, Any]) -> list[str]:
    """The per-episode arrays agree with the attrs they were written beside."""
    families, n = attrs["families"], len(attrs["episodes"])
    if not (_within(a["episode"], 0, n) and _within(a["episode_family"], 0, len(families))):
        return ["episode/episode_family: indices out of range"]
    episodes = [[families[f], int(s)] for f, s in zip(a["episode_family"], a["episode_seed"], strict=True)]
    problems = [] if episodes == attrs["episodes"] else [f"episode_family/episode_seed: {episodes} != attrs"]
    if a["episode_num_frames"].tolist() != attrs["episode_frames"]:
        problems.append("episode_num_frames: differs from attrs.episode_frames")
    if np.bincount(a["episode"], minlength=n).tolist() != attrs["episode_samples"]:
        problems.append("episode: samples per episode differ from attrs.episode_samples")
    return problems


def _check_values(a: dict[str, np.ndarray]) -> list[str]:
    """Finite floats, plausible ranges, and every sample's frame window inside its own episode."""
    problems = [
        f"{name}: {np.size(v) - np.isfinite(v).sum()} NaN/inf values"
        for name, v in a.items()
        if v.dtype.kind == "f" and not np.isfinite(v).all()
    ]
    for name in ("trajectory", "past_trajectory"):
        if (far := np.abs(a[name][..., :2]) >= MAX_METRES).any():
            problems.append(f"{name}: {far.sum()} x/y values beyond {MAX_METRES:.0f} m")
    speeds = {
        "ego": a["ego"][:, EGO_SPEED],
        "speed_limit": a["speed_limit"],
        "agents": a["agents"][..., 3][a["agent_mask"]],
    }
    problems += [
        f"{name}: speeds outside 0..{MAX_SPEED:.0f} m/s"
        for name, v in speeds.items()
        if not _within(v, 0, MAX_SPEED, closed=True)
    ]
    if not _within(a["lights"], -1, len(LIGHT_NAMES)):
        problems.append(f"lights: values outside -1..{len(LIGHT_NAMES) - 1}")
    if not _within(a["command"], 0, len(COMMANDS)):
        problems.append(f"command: values outside 0..{len(COMMANDS) - 1}")
    if not _within(a["stop_control"], 0, len(CONTROL_NAMES)):
        problems.append(f"stop_control: values outside 0..{len(CONTROL_NAMES) - 1}")
    if not _within(a["stop_distance"], -1, STOP_HORIZON, closed=True):
        problems.append(f"stop_distance: values outside -1..{STOP_HORIZON:.0f} m")
    start = a["episode_frame_start"][a["episode"]]
    end = start + a["episode_num_frames"][a["episode"]]
    if ((a["key_index"] - PAST < start) | (a["key_index"] + FUTURE >= end)).any():
        problems.append(f"key_index: past/future window (-{PAST}..+{FUTURE}) leaves the sample's episode")
    return problems


def _within(v: np.ndarray, low: float, high: float, closed: bool = False) -> bool:
    """All of v in [low, high), or [low, high] if closed."""
    return bool(((v >= low) & ((v <= high) if closed else (v < high))).all())
