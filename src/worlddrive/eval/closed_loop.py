"""Closed-loop episodes: a driver acts in the reactive world, the infraction tracker scores every step.

A driver (eval/drivers.py) is anything with `reset(world)` and `act(state) -> ExpertOutput`. Progress (EP) is
measured against the expert's progress on the same (family, seed), so the expert's episodes run first.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worlddrive.eval.drivers import REPLAN_EVERY, Driver, ExpertDriver, cached_driver
from worlddrive.eval.metrics import DriveScore, InfractionTracker
from worlddrive.parallel import run_jobs
from worlddrive.sim.expert import ExpertOutput
from worlddrive.sim.scenarios import make_family
from worlddrive.sim.state import WorldState
from worlddrive.sim.vehicle import DT
from worlddrive.sim.world import World


@dataclass
class EpisodeResult:
    family: str
    seed: int
    driver: str
    score: DriveScore | None
    progress_m: float
    route_length_m: float  # from the start point to the route's end
    steps: int
    error: str | None = None  # traceback when the driver or the world raised; the episode counts as a failure
    infractions: list[dict] = field(default_factory=list)  # notable steps: collisions, red lights, ...

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "score"}
        d.update({f"score_{k}": v for k, v in (self.score.as_dict() if self.score else {}).items()})
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EpisodeResult:
        """Inverse of `as_dict` (extra keys, such as an evaluation's driver spec, are ignored)."""
        score = {k.removeprefix("score_"): v for k, v in d.items() if k.startswith("score_")}
        own = {k: d[k] for k in cls.__dataclass_fields__ if k != "score"}
        return cls(**own, score=DriveScore(**score) if score else None)


def run_episode(
    family: str,
    seed: int,
    driver: Driver | None = None,
    expert_progress_m: float | None = None,
    family_config: dict | None = None,
    on_step: Callable[[World, WorldState, ExpertOutput], None] | None = None,
) -> EpisodeResult:
    """Drive one episode to its end (route done or time up). EP uses `expert_progress_m` (the driver's own progress
    when None, which is exact for the expert itself)."""
    driver = driver or ExpertDriver()
    spec = make_family(family, family_config).make(seed)
    world = World(spec)
    tracker = InfractionTracker(world.net.road, dt=DT)
    steps, notes, prev = 0, [], None
    try:
        state = world.reset()
        driver.reset(world)
        tracker.reset()
        tracker.update(state)
        for _ in range(round(spec.duration_s / DT)):
            out = driver.act(state)
            if on_step is not None:
                on_step(world, state, out)
            state = world.step(out.accel, out.steer)
            steps += 1
            inf = tracker.update(state)
            notes += _notable(inf, prev, state.t)
            prev = inf
            if world.ego_s >= world.route.length - 5.0:
                break
    except Exception:  # a crashing driver is a failed episode, recorded with its traceback; the run goes on
        return EpisodeResult(
            family,
            seed,
            getattr(driver, "name", "driver"),
            None,
            world.ego_s - spec.ego_start_s,
            world.route.length - spec.ego_start_s,
            steps,
            error=traceback.format_exc(),
            infractions=notes,
        )
    progress = world.ego_s - spec.ego_start_s
    ref = progress if expert_progress_m is None else expert_progress_m
    score = tracker.summary(progress_m=progress, expert_progress_m=ref)
    return EpisodeResult(
        family,
        seed,
        getattr(driver, "name", "driver"),
        score,
        float(progress),
        float(world.route.length - spec.ego_start_s),
        steps,
        infractions=notes,
    )


def _notable(inf, prev, t: float) -> list[dict]:
    """This step's collisions and rule violations, and the first step of each off-road or over-speed stretch."""
    out = [{"t": round(t, 1), "what": f"collision_{c.kind}", "with": c.other_id} for c in inf.collisions]
    for flag in ("red_light", "stop_sign_violation", "pedestrian_yield_violation"):
        if getattr(inf, flag):
            out.append({"t": round(t, 1), "what": flag})
    for flag in ("offroad", "over_speed"):
        if getattr(inf, flag) and not (prev is not None and getattr(prev, flag)):
            out.append({"t": round(t, 1), "what": flag})
    return out


EVAL_SEED_BASE = 1_000_000  # evaluation seeds start here; generated training data uses seeds below it


def eval_seeds(episodes: int, first: int = EVAL_SEED_BASE) -> list[int]:
    return list(range(first, first + episodes))


@dataclass(frozen=True)
class EpisodeJob:
    driver: str  # a make_driver spec: expert, idm, constant-velocity, builtin or a checkpoint path
    family: str
    seed: int
    expert_progress_m: float | None = None
    threads: int = 0  # torch threads of a learned driver; 0 leaves torch's default
    replan_every: int = REPLAN_EVERY  # a learned driver's network runs every this many steps (see PolicyDriver)


def run_job(job: EpisodeJob) -> EpisodeResult:
    """One episode in this process; a driver that fails to load is a failed episode with its traceback too."""
    try:
        driver = cached_driver(job.driver, job.threads, job.replan_every)
    except Exception:
        return EpisodeResult(job.family, job.seed, job.driver, None, 0.0, 0.0, 0, error=traceback.format_exc())
    return run_episode(job.family, job.seed, driver, job.expert_progress_m)


def run_episodes(
    jobs: list[EpisodeJob],
    done: Callable[[EpisodeResult], Any],
    workers: int = 1,
    ray_address: str | None = None,
) -> None:
    """`done(result)` for every job, in order of completion, on a process pool (one libsumo per worker) or Ray."""
    run_jobs(run_job, jobs, done, workers, ray_address)


def family_table(results: list[EpisodeResult]) -> list[dict]:
    """Per family: mean Drive Score and sub-scores, failures, infraction counts, per-km rates, route completion."""
    rows = []
    for fam in dict.fromkeys(r.family for r in results):
        rs = [r for r in results if r.family == fam]
        ok = [r for r in rs if r.score is not None]
        km = sum(r.progress_m for r in ok) / 1000.0
        row = {"family": fam, "episodes": len(rs), "errors": len(rs) - len(ok)}
        for key in ("ds", "nc", "dac", "tlc", "yc", "ttc", "ep", "c", "sl"):
            # A crashed episode scores 0: failures must not vanish from the mean.
            row[key] = float(np.mean([getattr(r.score, key) if r.score else 0.0 for r in rs]))
        for key in ("collisions_at_fault", "red_lights", "stop_sign_violations", "ped_yield_violations"):
            total = sum(getattr(r.score, key) for r in ok)
            row[key] = total
            row[f"{key}_per_km"] = total / km if km > 0 else 0.0
        row["route_completion"] = float(np.mean([min(r.progress_m / max(r.route_length_m, 1.0), 1.0) for r in rs]))
        row["km"] = km
        rows.append(row)
    return rows
