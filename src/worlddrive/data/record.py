"""Drive one expert episode and turn it into training samples (DESIGN.md "Data").

The simulation runs at 10 Hz; keyframes are taken at 2 Hz. Each keyframe's camera frame and BEV raster is rendered
once and stored once per episode: a sample refers to its current, past and future frames by keyframe index, so the
same pixels serve up to 11 samples without being drawn or written again.

Recovery data (DART-style): in a perturbed episode, short bursts of steering and acceleration noise are added to the
expert's controls, so the ego drifts off its lane or off its speed and the expert then brings it back. A sample is
kept only if no noise acts within its 4 s future: its label is what the expert really did from the displaced state,
and its past (frames, poses) shows the drift. A policy trained on expert data alone never sees such states and,
once off the line in closed loop, keeps going (behaviour cloning's compounding error).

An episode's first keyframes are samples too, with the past a policy has at the start of a closed-loop episode:
the frames before the first repeat it (the first PAST rows of `frames` are copies of it) and the poses before it
assume the ego drove straight on at its current speed (`assumed_past_pose`, which the policy uses too). Without
them no sample shows the first second, where an episode may already ask for braking (a red light 30 m ahead),
and a policy whose past says "not braking" had never been taught to start.

DAgger-style data: with a `takeover` driver (a learned policy), the bursts are driven by that policy instead of noise.
The states kept are then the ones the policy really leads to (its drift on a curve, its run at a stop line), each
labelled by the expert's recovery from there, so the next policy learns to correct the mistakes this one makes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from worlddrive.data.annotate import SceneFacts, instruction, reasoning
from worlddrive.eval.metrics import InfractionTracker, StepInfractions
from worlddrive.sim.camera import BevConfig, BevRenderer, CameraConfig, FrontCamera
from worlddrive.sim.expert import Expert
from worlddrive.sim.scenarios import make_family
from worlddrive.sim.state import EGO_SPEED, EGO_YAW, WorldState, to_ego_frame, wrap_angle
from worlddrive.sim.vehicle import DT
from worlddrive.sim.world import World

if TYPE_CHECKING:
    from worlddrive.eval.drivers import Driver

KEY_EVERY = 5  # simulation steps per keyframe: 10 Hz -> 2 Hz
FUTURE = 8  # keyframes ahead: 0.5 ... 4 s
PAST = 2  # keyframes behind: 0.5, 1 s
MAX_AGENTS = 32  # nearest agents kept per time step
AGENT_FIELDS = ("x", "y", "yaw", "speed", "length", "width", "kind")  # ego frame; kind 0 car, 1 truck, 2 parked, 3 ped
PED_KIND = 3
COMMANDS = ("follow", "straight", "left", "right")
# noise bursts of a perturbed episode: first start, gap after a burst, length (s); yaw-rate (rad/s) and
# acceleration (m/s^2) offsets, drawn uniformly; the yaw-rate offset's sign is random
BURST_FIRST_S, BURST_GAP_S, BURST_LENGTH_S = (1.0, 4.0), (5.0, 10.0), (0.5, 1.5)
BURST_YAW_RATE, BURST_ACCEL = (0.05, 0.2), (-2.0, 1.0)
TAKEOVER_LENGTH_S = (1.0, 3.0)  # a learned policy's bursts by default: longer, its mistakes grow slower than noise's


@dataclass
class EpisodeRecord:
    """One episode's keyframes and the samples built on them. Arrays of samples have Ns rows."""

    family: str
    seed: int
    frames: np.ndarray  # (PAST + K, H, W, 3) uint8 camera keyframes at 2 Hz, the first repeated PAST times before it
    bev: np.ndarray  # (PAST + K, C, Hb, Wb) uint8 BEV keyframes, padded the same way
    key_index: np.ndarray  # (Ns,) int32 row of "now"; past frames are key_index - 1..PAST, future + 1..FUTURE
    ego: np.ndarray  # (Ns, 7) float32 ego state (world frame pose, speed, accel, steer, yaw rate)
    trajectory: np.ndarray  # (Ns, FUTURE, 3) float32 expert future x, y, yaw in the ego frame
    past_trajectory: np.ndarray  # (Ns, PAST, 3) float32 ego poses 0.5 and 1 s ago in the current ego frame
    agents: np.ndarray  # (Ns, FUTURE + 1, MAX_AGENTS, 7) float32 boxes at t + 0 ... 4 s in the ego frame at t
    agent_mask: np.ndarray  # (Ns, FUTURE + 1, MAX_AGENTS) bool
    lights: np.ndarray  # (Ns, FUTURE + 1) int8 state of the ego's next light at t + 0 ... 4 s, -1 if none
    command: np.ndarray  # (Ns,) int8 index into COMMANDS
    speed_limit: np.ndarray  # (Ns,) float32 m/s
    stop_distance: np.ndarray  # (Ns,) float32 m along the route to its next stop line (WorldState.stop_distance)
    stop_control: np.ndarray  # (Ns,) int8 that line's control, an index into CONTROL_NAMES
    instruction: list[str]
    reasoning: list[str]
    facts: list[str]  # SceneFacts as JSON

    @property
    def num_samples(self) -> int:
        return len(self.key_index)


def record_episode(
    family: str,
    seed: int,
    camera: CameraConfig | None = None,
    bev: BevConfig | None = None,
    family_config: dict | None = None,
    perturb: float = 0.0,
    takeover: Driver | None = None,
    takeover_seconds: tuple[float, float] = TAKEOVER_LENGTH_S,
) -> EpisodeRecord:
    """Drive the expert through (family, seed) and collect every keyframe that has 4 s of future.

    With probability `perturb` (decided by the seed) the episode is driven with bursts of noise, or of the `takeover`
    driver when given (see the module doc), for `takeover_seconds` (shortest, longest) each; it then ends at its first
    collision or red light, so that no sample learns from a crash.
    """
    check_perturb(perturb)
    check_takeover_seconds(takeover_seconds)
    fam = make_family(family, family_config)
    spec = fam.make(seed)
    world = World(spec)
    expert = Expert(world)
    cam, bev_r = FrontCamera(camera or CameraConfig()), BevRenderer(bev or BevConfig())
    rng = np.random.default_rng([seed, 7])
    state = world.reset()
    steps = round(spec.duration_s / DT)
    bursts: Bursts | None = None
    if np.random.default_rng([seed, 17]).random() < perturb:
        wheelbase = world.ego.limits.wheelbase
        if takeover is None:
            bursts = NoiseBursts(seed, steps, wheelbase)
        else:
            bursts = Takeover(seed, steps, takeover, takeover_seconds)
        bursts.reset(world)
    tracker = None
    if bursts is not None:
        tracker = InfractionTracker(world.net.road, dt=DT)
        tracker.update(state)
    keys: list[WorldState] = []
    facts: list[dict] = []
    light_ahead: list[int] = []
    frames, rasters = [], []
    for k in range(steps + 1):
        out = expert.act(state, plan=False)  # the stored trajectory is what the expert then really did
        if k % KEY_EVERY == 0:
            keys.append(state)
            facts.append(out.facts)
            light_ahead.append(_light_state_ahead(expert, state))
            frames.append(cam.render(state, world.net.road))
            rasters.append(bev_r.render(state, world.net.road))
        if k == steps or world.ego_s >= world.route.length - 5.0:
            break
        accel, steer = out.accel, out.steer
        if bursts is not None:
            accel, steer = bursts(k, state, accel, steer)
        state = world.step(accel, steer)
        if tracker is not None and _infraction(tracker.update(state)):
            break
    noisy = np.zeros(steps + 1, bool) if bursts is None else bursts.active
    return _build_samples(family, seed, keys, facts, light_ahead, frames, rasters, rng, world, noisy)


def check_perturb(perturb: float) -> None:
    if not 0.0 <= perturb <= 1.0:
        raise ValueError(f"perturb must be a probability within [0, 1], got {perturb}")


def check_takeover_seconds(seconds: tuple[float, float]) -> None:
    shortest, longest = seconds
    if not 0 < shortest <= longest:
        raise ValueError(f"takeover bursts last from A to B seconds, 0 < A <= B; got {shortest}-{longest}")


def _bursts(rng: np.random.Generator, steps: int, length_s: tuple[float, float]) -> Iterator[slice]:
    """The sim steps of each burst: the first starts within BURST_FIRST_S, each is followed by a gap of BURST_GAP_S
    (longer than a sample's 4 s future, so samples in between are kept). Draws from `rng` in a fixed order."""
    t = rng.uniform(*BURST_FIRST_S)
    while t < steps * DT:
        length = rng.uniform(*length_s)
        yield slice(round(t / DT), round((t + length) / DT))
        t += length + rng.uniform(*BURST_GAP_S)


class Bursts:
    """Who drives at each step of a perturbed episode: the expert, except during bursts (`active`, per sim step)."""

    active: np.ndarray  # (steps + 1,) bool

    def reset(self, world: World) -> None:
        """Start of the episode."""

    def __call__(self, k: int, state: WorldState, accel: float, steer: float) -> tuple[float, float]:
        """Step k's executed (accel, steer), given the state and the expert's controls."""
        raise NotImplementedError


class NoiseBursts(Bursts):
    """The noise of a perturbed episode, drawn from its seed. During a burst the executed controls are the expert's
    controls at the burst's start plus a yaw-rate and an acceleration offset: the expert's corrections are ignored
    until the burst ends, as a policy that misjudged the road would, so the ego really drifts (0.5-2 m, 1-2 m/s)."""

    def __init__(self, seed: int, steps: int, wheelbase: float):
        rng = np.random.default_rng([seed, 19])
        self.wheelbase = wheelbase
        self.offset = np.zeros((steps + 1, 2))  # (steps + 1, 2) yaw rate (rad/s), acceleration (m/s^2)
        self.active = np.zeros(steps + 1, bool)
        for burst in _bursts(rng, steps, BURST_LENGTH_S):
            self.offset[burst] = rng.choice((-1.0, 1.0)) * rng.uniform(*BURST_YAW_RATE), rng.uniform(*BURST_ACCEL)
            self.active[burst] = True
        self._held: tuple[float, float] | None = None

    def __call__(self, k: int, state: WorldState, accel: float, steer: float) -> tuple[float, float]:
        """The yaw-rate offset becomes steering at this speed. A slow ego is not pushed forward (it would be shoved
        over a stop line it is waiting at)."""
        if not self.active[k]:
            self._held = None
            return accel, steer
        if self._held is None:
            self._held = accel, steer
        speed = float(state.ego[EGO_SPEED])
        yaw_rate, extra = self.offset[k]
        steer = self._held[1] + float(np.arctan(yaw_rate * self.wheelbase / max(speed, 3.0)))
        accel = self._held[0] + (float(extra) if speed > 2.0 or extra < 0 else 0.0)
        return accel, steer


class Takeover(Bursts):
    """Bursts in which `driver` (a learned policy) drives. It also sees the 1 s before each burst, so that it starts
    with the frame history it drives with in closed loop."""

    def __init__(self, seed: int, steps: int, driver: Driver, length_s: tuple[float, float] = TAKEOVER_LENGTH_S):
        self.driver = driver
        self.active = np.zeros(steps + 1, bool)
        for burst in _bursts(np.random.default_rng([seed, 23]), steps, length_s):
            self.active[burst] = True
        warm = PAST * KEY_EVERY  # the policy's frame history, in sim steps
        self.observe = np.convolve(self.active, np.ones(warm + 1), "full")[warm:] > 0  # active now or within `warm`

    def reset(self, world: World) -> None:
        self.driver.reset(world)

    def __call__(self, k: int, state: WorldState, accel: float, steer: float) -> tuple[float, float]:
        if not self.observe[k]:
            return accel, steer
        out = self.driver.act(state)
        return (out.accel, out.steer) if self.active[k] else (accel, steer)


def _infraction(step: StepInfractions) -> bool:
    """Ends a perturbed episode. Leaving the lane's paint (off-road) does not: the way back is what it is for."""
    return bool(step.collisions or step.red_light)


def _light_state_ahead(expert: Expert, state: WorldState) -> int:
    front = expert.world.ego_s + expert.limits.length / 2
    ahead = np.nonzero((expert.light_s > front - 0.5) & (expert.light_s - front < 80))[0]
    if not len(ahead):
        return -1
    return int(state.light_state[ahead[np.argmin(expert.light_s[ahead])]])


def _agents(state: WorldState, ref: np.ndarray) -> np.ndarray:
    """Boxes of vehicles and pedestrians in the ego frame of `ref`, nearest first, at most MAX_AGENTS rows (A, 7)."""
    veh = state.vehicles
    ped = state.pedestrians
    rows = np.zeros((len(veh) + len(ped), 7), np.float32)
    rows[: len(veh), :6] = veh
    rows[: len(veh), 6] = state.vehicle_kind
    rows[len(veh) :, :4] = ped
    rows[len(veh) :, 4:6] = 0.5
    rows[len(veh) :, 6] = PED_KIND
    rows[:, :2] = to_ego_frame(rows[:, :2], ref)
    rows[:, 2] = wrap_angle(rows[:, 2] - ref[EGO_YAW])
    order = np.argsort(np.hypot(rows[:, 0], rows[:, 1]))[:MAX_AGENTS]
    return rows[order]


def assumed_past_pose(ego: np.ndarray, age: int) -> tuple[float, float, float]:
    """The pose `age` keyframes before an episode's start, in the ego frame: straight back at the current speed."""
    return -float(ego[EGO_SPEED]) * age * KEY_EVERY * DT, 0.0, 0.0


def _build_samples(family, seed, keys, facts, light_ahead, frames, rasters, rng, world, noisy) -> EpisodeRecord:
    """Samples at every keyframe with a full future, except those with noise (`noisy`, per sim step) acting within
    their future: controls of steps 5i ... 5(i + FUTURE) - 1 make keyframes i + 1 ... i + FUTURE."""
    n = len(keys) - FUTURE
    idx = np.arange(max(n, 0), dtype=np.int32)
    idx = idx[np.array([not noisy[KEY_EVERY * i : KEY_EVERY * (i + FUTURE)].any() for i in idx], bool)]
    ego = np.stack([keys[i].ego for i in idx]) if len(idx) else np.zeros((0, 7), np.float32)
    traj = np.zeros((len(idx), FUTURE, 3), np.float32)
    past = np.zeros((len(idx), PAST, 3), np.float32)
    agents = np.zeros((len(idx), FUTURE + 1, MAX_AGENTS, 7), np.float32)
    mask = np.zeros((len(idx), FUTURE + 1, MAX_AGENTS), bool)
    lights = np.full((len(idx), FUTURE + 1), -1, np.int8)
    texts_i, texts_r, texts_f, command, limit, stop_distance, stop_control = [], [], [], [], [], [], []
    for row, i in enumerate(idx):
        ref = keys[i].ego
        for f in range(1, FUTURE + 1):
            e = keys[i + f].ego
            traj[row, f - 1] = (*to_ego_frame(e[:2], ref), wrap_angle(e[EGO_YAW] - ref[EGO_YAW]))
        for p in range(1, PAST + 1):
            if i - p < 0:
                past[row, p - 1] = assumed_past_pose(ref, p)
                continue
            e = keys[i - p].ego
            past[row, p - 1] = (*to_ego_frame(e[:2], ref), wrap_angle(e[EGO_YAW] - ref[EGO_YAW]))
        for f in range(FUTURE + 1):
            a = _agents(keys[i + f], ref)
            agents[row, f, : len(a)] = a
            mask[row, f, : len(a)] = True
            lights[row, f] = light_ahead[i + f]
        sf = SceneFacts.from_dict(facts[i])
        route_cmd, dist = world.route.next_turn(world.route.project(keys[i].ego[:2])[1])
        texts_i.append(instruction(route_cmd, rng, distance_m=dist))
        texts_r.append(reasoning(sf, rng))
        texts_f.append(json.dumps(sf.to_dict()))
        command.append(COMMANDS.index(keys[i].command))
        limit.append(keys[i].speed_limit)
        stop_distance.append(keys[i].stop_distance)
        stop_control.append(keys[i].stop_control)
    return EpisodeRecord(
        family=family,
        seed=seed,
        frames=np.stack(frames[:1] * PAST + frames),
        bev=np.stack(rasters[:1] * PAST + rasters),
        key_index=idx + PAST,
        ego=ego,
        trajectory=traj,
        past_trajectory=past,
        agents=agents,
        agent_mask=mask,
        lights=lights,
        command=np.asarray(command, np.int8),
        speed_limit=np.asarray(limit, np.float32),
        stop_distance=np.asarray(stop_distance, np.float32),
        stop_control=np.asarray(stop_control, np.int8),
        instruction=texts_i,
        reasoning=texts_r,
        facts=texts_f,
    )
