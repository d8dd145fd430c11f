"""Drivers for closed-loop evaluation: the privileged expert (upper bound), a learned policy, and two lower bounds
(constant velocity; IDM lane-following that obeys nothing but the car ahead).

A driver has `reset(world)` and `act(state) -> ExpertOutput` (controls, the trajectory it drives, facts) and may set
`reasoning` (text drawn in rollout GIFs). `make_driver(spec)` builds one from the name given on the command line.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from worlddrive.data.annotate import SceneFacts, reasoning
from worlddrive.sim.camera import FrontCamera
from worlddrive.sim.env import Observer
from worlddrive.sim.expert import Expert, ExpertOutput
from worlddrive.sim.state import EGO_SPEED, EGO_YAW, WorldState, to_ego_frame, to_world_frame, wrap_angle
from worlddrive.sim.vehicle import DT, N_WAYPOINTS, WAYPOINT_DT, WAYPOINT_TIMES, TrajectoryController
from worlddrive.sim.world import World

if TYPE_CHECKING:
    from worlddrive.models import WorldDrivePolicy
    from worlddrive.models.onnx_runtime import OnnxPolicy
    from worlddrive.plan.imagine import ImaginationPlanner

BASELINES = ("expert", "constant-velocity", "idm")
ENSEMBLE_SEP = "+"  # `--policy A+B`: checkpoints A and B drive as one, their plans averaged
# A learned policy's network runs every 5 env steps (2 Hz, the rate of the keyframes it is trained on) and its plan
# is driven in between. On training seeds 200-205 the builtin scored DS 0.32 replanning every step, 0.39 every 3,
# 0.47 every 5, 0.38 every 10 (results/README.md), and the closed loop runs ~3x faster.
REPLAN_EVERY = 5


def check_replan_every(n: int) -> int:
    """`n`, or a ValueError naming it: checked where a setting enters, before any training or driving."""
    if n < 1:
        raise ValueError(f"replan_every must be >= 1, got {n}")
    return n


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
        traj[:, 0] = v * WAYPOINT_TIMES
        return ExpertOutput(*self.controller(traj, v), traj)


class PolicyDriver:
    """A `WorldDrivePolicy` seeing the front camera, ego state and instruction; its trajectory goes to the same
    controller as the env's. With `reason_every` > 0 it also writes its reasoning every that many steps (slow).

    `replan_every` > 1 runs the network only every that many 10 Hz steps (it still sees every frame) and in between
    drives the last plan, moved into the current ego frame and advanced in time: the forward pass is ~95 % of a
    learned policy's closed-loop time, so 5 makes an evaluation ~4x cheaper at the cost of 0.5 s older plans.
    """

    def __init__(self, policy, name: str = "policy", reason_every: int = 0, replan_every: int = REPLAN_EVERY):
        self.policy, self.name = policy, name
        self.reason_every, self.replan_every = reason_every, check_replan_every(replan_every)
        self.camera = FrontCamera()
        self.reasoning: str | None = None
        self.prediction: dict = {}  # the last replan's `predict` output (imagination's candidates and risks too)

    def reset(self, world: World) -> None:
        self.policy.reset()
        self.observer = Observer(world, self.camera, None, world.spec.seed)
        self.controller = TrajectoryController(world.ego.limits)
        self.steps = 0
        self.plan: tuple[np.ndarray, np.ndarray] | None = None  # (trajectory (W, 3), ego state it was planned from)

    def act(self, state: WorldState) -> ExpertOutput:
        obs = self.observer(state)
        reason = self.reason_every > 0 and self.steps % self.reason_every == 0
        replan = self.steps % self.replan_every == 0
        if replan or reason:  # writing reasoning never replans: a GIF's episode is the one the evaluation scored
            pred = self.policy.predict(obs, reason=reason)  # sees the frame too
            if reason:
                self.reasoning = pred["reasoning"]
            if replan:
                self.plan, self.prediction = (pred["trajectory"], state.ego.copy()), pred
        else:
            self.policy.observe(obs)
        traj = self.plan[0] if replan else shift_plan(*self.plan, state.ego, (self.steps % self.replan_every) * DT)
        self.steps += 1
        return ExpertOutput(*self.controller(traj, float(state.ego[EGO_SPEED])), traj)


class PlanEnsemble:
    """Several checkpoints driving as one (`--policy A+B`): each sees every frame, the plan is the mean of their
    plans. Cloned policies of different training seeds err in different places (one seed to the next moved DS by
    0.05-0.11, results/README.md session 18), so their mean may drive better than either."""

    def __init__(self, members: list[WorldDrivePolicy | OnnxPolicy]):
        self.members = members
        # members on ONNX Runtime decide side by side (it frees the GIL; `load_policy` gives each a share of the
        # threads): an ensemble then costs about one member's time on 2 cores, not the sum
        from worlddrive.models.onnx_runtime import OnnxPolicy

        parallel = all(isinstance(m, OnnxPolicy) for m in members)
        self._pool = ThreadPoolExecutor(len(members)) if parallel and len(members) > 1 else None

    def reset(self) -> None:
        for m in self.members:
            m.reset()

    def observe(self, obs: dict) -> None:
        for m in self.members:
            m.observe(obs)

    def select_action(self, obs: dict) -> np.ndarray:
        return self.predict(obs)["trajectory"]

    def predict(self, obs: dict, reason: bool = False) -> dict:
        """As `WorldDrivePolicy.predict`: the members' mean trajectory (W, 3), as the only sample (1, W, 3), and the
        first member's reasoning."""
        asks = [(m, reason and not i) for i, m in enumerate(self.members)]
        if self._pool is None:
            preds = [m.predict(obs, reason=r) for m, r in asks]
        else:
            preds = list(self._pool.map(lambda ask: ask[0].predict(obs, reason=ask[1]), asks))
        mean = np.mean([p["trajectory"] for p in preds], axis=0)
        return {"trajectory": mean, "samples": mean[None], "reasoning": preds[0]["reasoning"]}


def shift_plan(traj: np.ndarray, planned_at: np.ndarray, ego: np.ndarray, elapsed: float) -> np.ndarray:
    """A plan (W, 3) made `elapsed` seconds ago from ego state `planned_at`, as the waypoints it asks for at
    0.5 s, 1 s, ... from now, in the current ego frame. Times past the plan's horizon extend its last segment."""
    t = WAYPOINT_DT * np.arange(N_WAYPOINTS + 1)  # (W + 1,) the plan's times, its origin first
    pts = np.concatenate([np.zeros((1, 3)), np.asarray(traj, np.float64)])  # (W + 1, 3) old ego frame
    want = elapsed + t[1:]  # (W,)
    last = (want - t[-1]).clip(min=0.0) / WAYPOINT_DT  # segments beyond the horizon
    xyh = np.stack([np.interp(want, t, pts[:, k]) for k in range(3)], axis=-1)  # (W, 3)
    xyh += last[:, None] * (pts[-1] - pts[-2])
    out = np.empty((N_WAYPOINTS, 3), np.float32)
    out[:, :2] = to_ego_frame(to_world_frame(xyh[:, :2], planned_at), ego)
    out[:, 2] = wrap_angle(xyh[:, 2] + planned_at[EGO_YAW] - ego[EGO_YAW])
    return out


def split_planner(spec: str) -> tuple[str, str | None]:
    """A --policy value `X@imagine` (or X@PACE@imagine: the world model picks among retimed plans, plan/imagine.py)
    or `X@fast` (the plan as the network gives it) -> (X, that planner); else (spec, None): the checkpoint's own
    PolicyConfig.planner."""
    from worlddrive.models.config import PLANNERS

    rest, at, last = spec.rpartition("@")
    return (rest, last) if at and last in PLANNERS else (spec, None)


def split_pace(spec: str) -> tuple[str, str | None]:
    """A --policy value `CHECKPOINT@PACE` -> (CHECKPOINT, PACE): that checkpoint driven at another pace than its
    config's (PolicyConfig.pace, e.g. `runs/x@cautious`); without an @: (spec, None). A planner suffix is dropped."""
    rest = split_planner(spec)[0]
    checkpoint, at, pace = rest.rpartition("@")
    return (checkpoint, pace) if at else (rest, None)


def policy_dir(spec: str) -> Path:
    """The checkpoint folder a --policy value names: `builtin`, a training RUN folder, or a checkpoint folder (an
    @PACE suffix is not part of it)."""
    spec = split_pace(spec)[0]
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


def make_driver(spec: str, reason_every: int = 0, plan: bool = False, replan_every: int = REPLAN_EVERY) -> Driver:
    """A driver from its command-line name: expert, constant-velocity, idm, builtin, or a checkpoint path
    (`replan_every`: see PolicyDriver; the rule-based drivers act every step)."""
    if spec == "expert":
        return ExpertDriver(plan=plan)
    if spec == "idm":
        return IdmDriver(plan=plan)
    if spec == "constant-velocity":
        return ConstantVelocityDriver()
    return PolicyDriver(load_policy(spec), driver_name(spec), reason_every, replan_every)


def ensemble_members(spec: str) -> list[str]:
    """The checkpoint specs of a --policy value: `A+B` drives A and B as one `PlanEnsemble`; anything else is one."""
    return spec.split(ENSEMBLE_SEP)


def load_policy(
    spec: str, threads: int | None = None
) -> WorldDrivePolicy | OnnxPolicy | PlanEnsemble | ImaginationPlanner:
    """The policy a --policy value names, at its @PACE and by its @PLANNER if it has them: a WorldDrivePolicy, or an
    OnnxPolicy for a folder `worlddrive export` wrote (on `threads`, torch's number by default); `A+B`: a
    PlanEnsemble of them; planned by imagination (`X@imagine`, or a checkpoint whose config says so): X inside an
    ImaginationPlanner."""
    import torch  # only when a learned policy drives

    from worlddrive.models import WorldDrivePolicy
    from worlddrive.models.onnx_runtime import ONNX_FILE, OnnxPolicy
    from worlddrive.plan.imagine import ImaginationPlanner

    members = ensemble_members(spec)
    if len(members) > 1:
        return PlanEnsemble([load_policy(m, max(1, torch.get_num_threads() // len(members))) for m in members])
    directory, pace, planner = policy_dir(spec), split_pace(spec)[1], split_planner(spec)[1]
    if (directory / ONNX_FILE).is_file():
        if planner == "imagine":
            raise ValueError(
                f"--policy {spec}: imagination runs the eager world model; drop @imagine or use the "
                f"checkpoint `worlddrive export` was given"
            )
        return OnnxPolicy(directory, pace, threads)
    policy = WorldDrivePolicy.from_pretrained(directory, pace=pace, planner=planner)
    return ImaginationPlanner(policy) if policy.config.planner == "imagine" else policy


def on_onnx_runtime(spec: str) -> bool:
    """True when the checkpoint a --policy value names holds a graph from `worlddrive export`: it drives on ONNX
    Runtime."""
    from worlddrive.models.onnx_runtime import ONNX_FILE

    return (policy_dir(spec) / ONNX_FILE).is_file()


def driver_name(spec: str) -> str:
    """A short, unique-enough label for tables: the baseline's name, builtin, or the run folder's name (+ @PACE).
    From the spec alone, so that records name their policy after its checkpoint has gone."""
    if spec in BASELINES:
        return spec
    if ENSEMBLE_SEP in spec:
        return ENSEMBLE_SEP.join(driver_name(m) for m in ensemble_members(spec))
    checkpoint, pace = split_pace(spec)
    path = Path(checkpoint)
    name = "builtin" if checkpoint == "builtin" else path.parent.name if path.name == "policy" else path.name
    planner = split_planner(spec)[1]
    return (f"{name}@{pace}" if pace else name) + (f"@{planner}" if planner else "")


_cache: dict[tuple[str, int], Driver] = {}  # per worker process: a policy is loaded once, not once per episode


def cached_driver(spec: str, threads: int = 0, replan_every: int = REPLAN_EVERY) -> Driver:
    """`make_driver(spec)`, built once per process; `threads` > 0 sets torch's threads first (one per worker)."""
    if (spec, replan_every) not in _cache:
        if threads:
            import torch

            torch.set_num_threads(threads)
        _cache[spec, replan_every] = make_driver(spec, replan_every=replan_every)
    return _cache[spec, replan_every]
