"""Drive expert episodes into shards, in parallel and resumably (DESIGN.md "Data", "Scaling out").

The work is a pure function of the arguments: the episodes are (family, seed) for each family in order and seeds
seed ... seed + episodes - 1, and shard i holds episodes[i*E : (i+1)*E]. A shard is the unit of work and of
atomicity (format.py), so a rerun after a crash, even `kill -9`, skips the finished shards, redoes the rest and ends
with the same files as an uninterrupted run; a finished shard that does not fit the plan is an error, never
overwritten. Each worker process records one episode at a time, because libsumo holds one simulation per process.
With a Ray address the same shard tasks go to a cluster; the output folder must then be one that every node sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from worlddrive.data.format import PARTIAL, SHARDS, open_shard, shard_paths, write_metadata, write_shard
from worlddrive.data.record import (
    TAKEOVER_LENGTH_S,
    EpisodeRecord,
    check_perturb,
    check_takeover_seconds,
    record_episode,
)
from worlddrive.parallel import run_jobs
from worlddrive.sim.camera import BevConfig, CameraConfig
from worlddrive.sim.scenarios import FAMILIES, make_family

RecordFn = Callable[..., EpisodeRecord]  # (family, seed, camera=..., bev=..., perturb=...) -> EpisodeRecord


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs to write one shard; picklable for process pools and Ray."""

    path: Path
    episodes: tuple[tuple[str, int], ...]
    camera: CameraConfig
    bev: BevConfig
    record_fn: RecordFn
    perturb: float = 0.0
    takeover: str | None = None  # a driver spec (builtin or a checkpoint) that drives the bursts instead of noise
    takeover_sha256: str = ""  # of its weights: a resume with other weights under the same path is refused
    takeover_seconds: tuple[float, float] = TAKEOVER_LENGTH_S  # how long its bursts last, shortest and longest
    threads: int = 0  # torch threads of the takeover policy in each worker
    family_config: dict[str, Any] | None = None  # overrides of every family's default_config, e.g. ego_speed

    @property
    def config(self) -> dict[str, Any]:
        """Recording settings as stored in shard attrs (JSON types, so a rerun compares equal)."""
        config: dict[str, Any] = {"camera": asdict(self.camera), "bev": asdict(self.bev)}
        if self.family_config:  # absent when not given, so shards written before the option existed match
            config["family_config"] = self.family_config
        if self.perturb:  # absent when 0, so shards written before the option existed still match their plan
            config["perturb"] = self.perturb
        if self.takeover:
            config["takeover"] = {"policy": self.takeover}
            if self.takeover_sha256:  # a rule-based driver has no weights
                config["takeover"]["weights_sha256"] = self.takeover_sha256
            if self.takeover_seconds != TAKEOVER_LENGTH_S:  # absent at the default, as in shards written before
                config["takeover"]["seconds"] = list(self.takeover_seconds)
        return json.loads(json.dumps(config))


def plan(families: list[str], episodes: int, seed: int, episodes_per_shard: int) -> list[tuple[tuple[str, int], ...]]:
    """The episodes of each shard, in shard order."""
    eps = [(f, s) for f in families for s in range(seed, seed + episodes)]
    return [tuple(eps[i : i + episodes_per_shard]) for i in range(0, len(eps), episodes_per_shard)]


def run_job(job: ShardJob) -> tuple[int, int]:
    """Record and write one shard; returns (episodes, samples)."""
    kwargs: dict[str, Any] = {"perturb": job.perturb} if job.perturb else {}
    if job.family_config:
        kwargs["family_config"] = job.family_config
    if job.takeover:
        from worlddrive.eval.drivers import cached_driver

        kwargs["takeover"] = cached_driver(job.takeover, job.threads)
        kwargs["takeover_seconds"] = job.takeover_seconds
    records = [job.record_fn(f, s, camera=job.camera, bev=job.bev, **kwargs) for f, s in job.episodes]
    attrs = write_shard(job.path, records, job.config)
    return len(records), sum(attrs["episode_samples"])


def generate(
    families: list[str],
    episodes: int,
    seed: int,
    out: Path,
    workers: int = 1,
    ray_address: str | None = None,
    episodes_per_shard: int = 4,
    progress: bool = True,
    camera: CameraConfig | None = None,
    bev: BevConfig | None = None,
    record_fn: RecordFn = record_episode,
    perturb: float = 0.0,
    takeover: str | None = None,
    takeover_seconds: tuple[float, float] = TAKEOVER_LENGTH_S,
    family_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Generate `episodes` episodes per family into `out`, or finish an interrupted run; returns info.json's dict.

    `perturb`: the share of episodes driven with noise bursts for recovery data (record.py); 0 records the expert
    as it drives. `takeover`: a learned policy (builtin or a checkpoint) that drives those bursts instead of noise
    (DAgger-style data); its weights' hash is recorded. `takeover_seconds`: how long its bursts last (shortest,
    longest; longer ones reach the states where a policy's slow drift, e.g. in speed, has grown). `family_config`:
    overrides of every family's `default_config` (HighwayEnv-style), e.g. {"ego_speed": (2, 16)} starts episodes
    at speeds the expert would not choose there, so that its recovery (braking for a junction it meets too fast,
    pulling away from a crawl) is in the data.
    `record_fn` stands in for `record_episode` in tests; it must be importable by the worker processes.
    """
    _check_args(families, episodes, workers, episodes_per_shard)
    for family in families:  # an unknown key fails here, naming it, not in a worker
        make_family(family, family_config)
    check_perturb(perturb)
    check_takeover_seconds(takeover_seconds)
    if takeover_seconds != TAKEOVER_LENGTH_S and not takeover:
        raise ValueError("takeover_seconds sets how long a takeover policy drives: give a takeover policy too")
    sha = _takeover_sha256(takeover, perturb)
    out = Path(out)
    _check_writable(out)
    camera, bev = camera or CameraConfig(), bev or BevConfig()
    threads = max(1, (os.cpu_count() or 1) // workers) if takeover and not ray_address else 0
    jobs = [
        ShardJob(
            out / SHARDS / f"shard_{i:05d}.zarr",
            eps,
            camera,
            bev,
            record_fn,
            float(perturb),
            takeover,
            sha,
            tuple(map(float, takeover_seconds)),
            threads,
            json.loads(json.dumps(family_config)) if family_config else None,
        )
        for i, eps in enumerate(plan(families, episodes, seed, episodes_per_shard))
    ]
    todo = _pending(out, jobs)
    _run_with_progress(todo, sum(len(j.episodes) for j in jobs), workers, ray_address, progress)
    generator = {
        "families": list(families),
        "episodes": episodes,
        "seed": seed,
        "episodes_per_shard": episodes_per_shard,
        **jobs[0].config,
    }
    return write_metadata(out, generator)


def _check_args(families: list[str], episodes: int, workers: int, episodes_per_shard: int) -> None:
    if not families:
        raise ValueError("no scenario families given")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown scenario families {unknown}; known: {', '.join(FAMILIES)}")
    if len(set(families)) != len(families):
        raise ValueError(f"scenario families repeat: {families}")
    for name, value in (("episodes", episodes), ("workers", workers), ("episodes_per_shard", episodes_per_shard)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _takeover_sha256(takeover: str | None, perturb: float) -> str:
    """The takeover policy's weights hash; checks that there are bursts for it to drive and that it loads."""
    if not takeover:
        return ""
    if not perturb:
        raise ValueError("a takeover policy drives the bursts of perturbed episodes: give perturb > 0 too")
    from worlddrive.eval.drivers import BASELINES, policy_dir

    if takeover in BASELINES:
        return ""
    return hashlib.sha256((policy_dir(takeover) / "model.safetensors").read_bytes()).hexdigest()


def _check_writable(out: Path) -> None:
    """Fail before any work if `out` cannot hold shards: a file in the way, no permission, a read-only disk."""
    try:
        (out / SHARDS).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out / SHARDS):
            pass
    except OSError as e:
        raise PermissionError(f"output folder {out} is not writable: {e}") from e


def _pending(out: Path, jobs: list[ShardJob]) -> list[ShardJob]:
    """Jobs still to run. Deletes leftover partial shards; raises if a finished shard does not fit the plan."""
    by_name = {j.path.name: j for j in jobs}
    for path in shard_paths(out):
        job = by_name.get(path.name)
        try:
            attrs = dict(open_shard(path).attrs)
        except (OSError, ValueError) as e:
            raise ValueError(f"finished shard {path} is unreadable ({e}); delete it to regenerate it") from e
        planned = None if job is None else ([list(e) for e in job.episodes], job.config)
        if (attrs.get("episodes"), attrs.get("config")) != planned:
            why = (
                "this run plans no such shard"
                if planned is None
                else f"this run plans episodes {planned[0]} there"
                if attrs.get("episodes") != planned[0]
                else f"it was made with other recording settings ({attrs.get('config')} vs {planned[1]})"
            )
            raise ValueError(
                f"finished shard {path} holds episodes {attrs.get('episodes')}, but {why}; "
                "use another output folder, or the arguments that made it"
            )
    for partial in (out / SHARDS).glob("*" + PARTIAL):
        shutil.rmtree(partial)  # a killed writer's; its shard is redone below
    return [j for j in jobs if not j.path.exists()]


def _run_with_progress(todo: list[ShardJob], total: int, workers: int, ray_address: str | None, progress: bool) -> None:
    """Run the jobs; a bar shows episodes done (finished shards included) and the samples/s of this run."""
    columns = (
        TextColumn("generate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("episodes"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("generate", total=total, completed=total - sum(len(j.episodes) for j in todo), rate="")
        start, samples = time.perf_counter(), 0

        def done(result: tuple[int, int]) -> None:
            nonlocal samples
            samples += result[1]
            bar.update(task, advance=result[0], rate=f"{samples / (time.perf_counter() - start):.0f} samples/s")

        run_jobs(run_job, todo, done, workers, ray_address)
