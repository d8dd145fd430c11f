"""Closed-loop episodes: a driver acts in the reactive world, the infraction tracker scores every step.

A driver is anything with `reset(world)` and `act(state) -> DriverOutput`; the expert is one, learned policies (later)
are others. Progress (EP) is measured against the expert's progress on the same (family, seed).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from worlddrive.eval.metrics import DriveScore, InfractionTracker
from worlddrive.sim.expert import Expert, ExpertOutput
from worlddrive.sim.scenarios import make_family
from worlddrive.sim.state import WorldState
from worlddrive.sim.vehicle import DT
from worlddrive.sim.world import World


class Driver(Protocol):
    def reset(self, world: World) -> None: ...

    def act(self, state: WorldState) -> ExpertOutput: ...


class ExpertDriver:
    """The privileged expert as a driver."""

    name = "expert"

    def reset(self, world: World) -> None:
        self.expert = Expert(world)

    def act(self, state: WorldState) -> ExpertOutput:
        return self.expert.act(state)


@dataclass
class EpisodeResult:
    family: str
    seed: int
    driver: str
    score: DriveScore | None
    progress_m: float
    route_length_m: float
    steps: int
    error: str | None = None  # traceback when the driver or the world raised; the episode counts as a failure
    infractions: list[dict] = field(default_factory=list)  # notable steps: collisions, red lights, ...

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "score"}
        d.update({f"score_{k}": v for k, v in (self.score.as_dict() if self.score else {}).items()})
        return d


def run_episode(family: str, seed: int, driver: Driver | None = None, expert_progress_m: float | None = None,
                family_config: dict | None = None,
                on_step: Callable[[World, WorldState, ExpertOutput], None] | None = None) -> EpisodeResult:
    """Drive one episode to its end (route done or time up). EP uses `expert_progress_m` (the driver's own progress
    when None, which is exact for the expert itself)."""
    driver = driver or ExpertDriver()
    spec = make_family(family, family_config).make(seed)
    world = World(spec)
    tracker = InfractionTracker(world.net.road, dt=DT)
    steps, notes = 0, []
    try:
        state = world.reset()
        driver.reset(world)
        tracker.reset()
        tracker.update(state)
        for _ in range(int(round(spec.duration_s / DT))):
            out = driver.act(state)
            if on_step is not None:
                on_step(world, state, out)
            state = world.step(out.accel, out.steer)
            steps += 1
            inf = tracker.update(state)
            notes += _notable(inf, state.t)
            if world.ego_s >= world.route.length - 5.0:
                break
    except Exception:  # a crashing driver is a failed episode, recorded with its traceback; the run goes on
        return EpisodeResult(family, seed, getattr(driver, "name", "driver"), None, world.ego_s, world.route.length,
                             steps, error=traceback.format_exc(), infractions=notes)
    progress = world.ego_s - spec.ego_start_s
    ref = progress if expert_progress_m is None else expert_progress_m
    score = tracker.summary(progress_m=progress, expert_progress_m=ref)
    return EpisodeResult(family, seed, getattr(driver, "name", "driver"), score, float(progress),
                         float(world.route.length), steps, infractions=notes)


def _notable(inf, t: float) -> list[dict]:
    out = [{"t": round(t, 1), "what": f"collision_{c.kind}", "with": c.other_id} for c in inf.collisions]
    for flag in ("red_light", "stop_sign_violation", "pedestrian_yield_violation"):
        if getattr(inf, flag):
            out.append({"t": round(t, 1), "what": flag})
    return out


def mean_or_nan(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")
