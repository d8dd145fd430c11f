"""Drivers for closed-loop evaluation: the privileged expert (upper bound), a learned policy, and two lower bounds
(constant velocity; IDM lane-following that obeys nothing but the car ahead).

A driver has `reset(world)` and `act(state) -> ExpertOutput` (controls, the trajectory it drives, facts) and may set
`reasoning` (text drawn in rollout GIFs). `make_driver(spec)` builds one from the name given on the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from worlddrive.data.annotate import SceneFacts, reasoning
from worlddrive.sim.camera import FrontCamera
from worlddrive.sim.env import Observer
from worlddrive.sim.expert import Expert, ExpertOutput
from worlddrive.sim.state import EGO_SPEED, WorldState
from worlddrive.sim.vehicle import N_WAYPOINTS, WAYPOINT_DT, TrajectoryController
from worlddrive.sim.world import World

BASELINES = ("expert", "constant-velocity", "idm")
BUILTIN = Path(__file__).resolve().parents[1] / "builtin" / "small"  # the shipped checkpoint, see its COMMAND.md


class Driver(Protocol):
    name: str
    reasoning: str | None

    def reset(self, world: World) -> None: ...

    def act(self, state: WorldState) -> ExpertOutput: ...


class ExpertDriver:
    """The privileged expert; `plan=True` also rolls out its 4 s plan every step and describes the scene in words."""

    name = "expert"

    def __init__(self, plan: bool = False):
        self.plan = plan
        self.reasoning: str | None = None

    def reset(self, world: World) -> None:
        self.expert = Expert(world)
        self.rng = np.random.default_rng([world.spec.seed, 13])

    def act(self, state: WorldState) -> ExpertOutput:
        out = self.expert.act(state, plan=self.plan)
        if self.plan and round(state.t * 10) % 5 == 0:  # refreshed at the dataset's keyframe rate, 2 Hz
            self.reasoning = reasoning(SceneFacts.from_dict(out.facts), self.rng)
        return out


class IdmDriver(ExpertDriver):
    """IDM lane-following: the expert's route, speed limits and car-following, blind to lights, signs and people."""

    name = "idm"

    def reset(self, world: World) -> None:
        self.expert = Expert(world, obey=frozenset({"vehicle"}))
        self.rng = np.random.default_rng([world.spec.seed, 13])


class ConstantVelocityDriver:
    """Keeps its speed and heading: waypoints straight ahead at the current speed."""

    name = "constant-velocity"
    reasoning = None

    def reset(self, world: World) -> None:
        self.controller = TrajectoryController(world.ego.limits)

    def act(self, state: WorldState) -> ExpertOutput:
        v = float(state.ego[EGO_SPEED])
        traj = np.zeros((N_WAYPOINTS, 3), np.float32)
        traj[:, 0] = v * WAYPOINT_DT * np.arange(1, N_WAYPOINTS + 1)
        return ExpertOutput(*self.controller(traj, v), traj)


class PolicyDriver:
    """A `WorldDrivePolicy` seeing the front camera, ego state and instruction; its trajectory goes to the same
    controller as the env's. With `reason_every` > 0 it also writes its reasoning every that many steps (slow)."""

    def __init__(self, policy, name: str = "policy", reason_every: int = 0):
        self.policy, self.name, self.reason_every = policy, name, reason_every
        self.camera = FrontCamera()
        self.reasoning: str | None = None

    def reset(self, world: World) -> None:
        self.policy.reset()
        self.observer = Observer(world, self.camera, None, world.spec.seed)
        self.controller = TrajectoryController(world.ego.limits)
        self.steps = 0

    def act(self, state: WorldState) -> ExpertOutput:
        reason = self.reason_every > 0 and self.steps % self.reason_every == 0
        pred = self.policy.predict(self.observer(state), reason=reason)
        self.steps += 1
        if reason:
            self.reasoning = pred["reasoning"]
        traj = pred["trajectory"]
        return ExpertOutput(*self.controller(traj, float(state.ego[EGO_SPEED])), traj)


def policy_dir(spec: str) -> Path:
    """The checkpoint folder a --policy value names: `builtin`, a training RUN folder, or a checkpoint folder."""
    if spec == "builtin":
        path = BUILTIN
    else:
        path = Path(spec)
        if (path / "policy" / "config.json").exists():
            path = path / "policy"
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"--policy {spec!r}: no checkpoint there (expected config.json in {path}); use a RUN folder written by "
            f"`worlddrive train`, a checkpoint folder, builtin, or one of {', '.join(BASELINES)}"
        )
    return path


def make_driver(spec: str, reason_every: int = 0, plan: bool = False) -> Driver:
    """A driver from its command-line name: expert, constant-velocity, idm, builtin, or a checkpoint path."""
    if spec == "expert":
        return ExpertDriver(plan=plan)
    if spec == "idm":
        return IdmDriver(plan=plan)
    if spec == "constant-velocity":
        return ConstantVelocityDriver()
    from worlddrive.models import WorldDrivePolicy  # torch is imported only when a learned policy drives

    path = policy_dir(spec)
    name = "builtin" if spec == "builtin" else path.parent.name if path.name == "policy" else path.name
    return PolicyDriver(WorldDrivePolicy.from_pretrained(path), name, reason_every)


_cache: dict[str, Driver] = {}  # per worker process: a policy is loaded once, not once per episode


def cached_driver(spec: str, threads: int = 0) -> Driver:
    """`make_driver(spec)`, built once per process; `threads` > 0 sets torch's threads first (one per worker)."""
    if spec not in _cache:
        if threads:
            import torch

            torch.set_num_threads(threads)
        _cache[spec] = make_driver(spec)
    return _cache[spec]
