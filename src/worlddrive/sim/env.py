"""`worlddrive/Drive-v0`: the world as a gymnasium env (HighwayEnv style: a `default_config` merged with yours).

Observation: front camera (H, W, 3) uint8, optional BEV raster (C, Hb, Wb) uint8, ego state (7,), the instruction
text, the navigation command and the speed limit at the ego's position (m/s, as a navigation map has it). Action: 8
ego-frame waypoints (x, y, yaw; 0.5 s apart) followed by the built-in controller (`action_type="trajectory"`), or
direct controls in [-1, 1] (steer, acceleration; `"control"`).
`info` carries the true `WorldState`, this step's infractions, the expert's plan and facts, and progress.
"""

from __future__ import annotations

import string
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from worlddrive.data.annotate import instruction
from worlddrive.eval.metrics import InfractionTracker
from worlddrive.sim.camera import BEV_CHANNELS, BevConfig, BevRenderer, CameraConfig, FrontCamera
from worlddrive.sim.expert import Expert
from worlddrive.sim.scenarios import FAMILIES, make_family
from worlddrive.sim.state import CONTROL_NAMES, EGO_SPEED, STOP_HORIZON, WorldState
from worlddrive.sim.vehicle import DT, N_WAYPOINTS, TrajectoryController
from worlddrive.sim.world import World

COMMANDS = ("follow", "straight", "left", "right")
TEXT_CHARSET = string.ascii_letters + string.digits + " .,;:'-!?()/%"
MAX_TRAJ_M = 120.0  # waypoints farther than this from the ego are rejected as out of range


class DriveEnv(gym.Env):
    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": round(1 / DT)}

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {
            "family": "urban_mixed",
            "family_config": {},
            "action_type": "trajectory",  # or "control"
            "camera": {},  # CameraConfig overrides
            "bev": True,
            "bev_config": {},
            "heldout_instructions": False,
        }

    def __init__(self, config: dict[str, Any] | None = None, render_mode: str | None = None):
        defaults = self.default_config()
        unknown = set(config or {}) - set(defaults)
        if unknown:
            raise KeyError(f"unknown DriveEnv config keys {sorted(unknown)}; valid keys: {sorted(defaults)}")
        self.config = {**defaults, **(config or {})}
        if self.config["family"] not in FAMILIES:
            raise KeyError(f"unknown scenario family {self.config['family']!r}; known: {', '.join(FAMILIES)}")
        if self.config["action_type"] not in ("trajectory", "control"):
            raise ValueError(f"action_type must be 'trajectory' or 'control', got {self.config['action_type']!r}")
        self.render_mode = render_mode
        self.family = make_family(self.config["family"], self.config["family_config"])
        self.camera = FrontCamera(CameraConfig(**self.config["camera"]))
        self.bev = BevRenderer(BevConfig(**self.config["bev_config"])) if self.config["bev"] else None
        self.controller = TrajectoryController()
        cam = self.camera.config
        obs = {
            "camera": spaces.Box(0, 255, (cam.height, cam.width, 3), np.uint8),
            "ego": spaces.Box(-1e5, 1e5, (7,), np.float32),  # world-frame pose and dynamics
            "instruction": spaces.Text(max_length=256, charset=TEXT_CHARSET),
            "command": spaces.Discrete(len(COMMANDS)),
            "speed_limit": spaces.Box(0, 100, (), np.float32),  # m/s at the ego's position, as a navigation map has it
            # the route's next stop line as a navigation map has it: metres along the route, and its control
            "stop_distance": spaces.Box(-1, STOP_HORIZON, (), np.float32),
            "stop_control": spaces.Discrete(len(CONTROL_NAMES)),
        }
        if self.bev is not None:
            bc = self.bev.config
            obs["bev"] = spaces.Box(0, 1, (len(BEV_CHANNELS), bc.height, bc.width), np.uint8)
        self.observation_space = spaces.Dict(obs)
        if self.config["action_type"] == "trajectory":
            self.action_space = spaces.Box(-MAX_TRAJ_M, MAX_TRAJ_M, (N_WAYPOINTS, 3), np.float32)
        else:
            self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.world: World | None = None

    # ------------------------------------------------------------------ gymnasium API

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        episode_seed = int(seed) if seed is not None else int(self.np_random.integers(0, 2**31 - 1))
        if self.world is not None:
            self.world.close()
        self.world = World(self.family.make(episode_seed))
        self.state = self.world.reset()
        self.expert = Expert(self.world)
        self.tracker = InfractionTracker(self.world.net.road, dt=DT)
        self.tracker.update(self.state)
        self.observer = Observer(
            self.world, self.camera, self.bev, episode_seed, heldout_instructions=self.config["heldout_instructions"]
        )
        self.steps = 0
        self._last_s = self.world.ego_s
        return self.observer(self.state), self._info(None)

    def step(self, action):
        if self.world is None:
            raise RuntimeError("call reset() before step()")
        accel, steer = self._controls(np.asarray(action, np.float32))
        self.state = self.world.step(accel, steer)
        self.steps += 1
        inf = self.tracker.update(self.state)
        w = self.world
        terminated = bool(w.ego_s >= w.route.length - 5.0)
        truncated = bool(self.state.t >= w.spec.duration_s - 1e-6) and not terminated
        reward = float(w.ego_s - self._last_s)  # metres of route progress, minus penalties
        self._last_s = w.ego_s
        if inf.collisions or inf.offroad:
            reward -= 10.0
        return self.observer(self.state), reward, terminated, truncated, self._info(inf)

    def render(self):
        return self.camera.render(self.state, self.world.net.road) if self.world is not None else None

    def close(self):
        if self.world is not None:
            self.world.close()
            self.world = None

    # ------------------------------------------------------------------ helpers

    def _controls(self, action: np.ndarray) -> tuple[float, float]:
        if not np.isfinite(action).all():
            raise ValueError(f"action contains NaN or inf: {action.tolist()}")
        if action.shape != self.action_space.shape:
            raise ValueError(f"action shape {action.shape} != expected {self.action_space.shape}")
        if self.config["action_type"] == "control":
            if np.abs(action).max() > 1.0 + 1e-6:
                raise ValueError(f"control action must lie in [-1, 1], got {action.tolist()}")
            lim = self.world.ego.limits
            steer = float(action[0]) * lim.max_steer
            accel = float(action[1]) * (lim.max_accel if action[1] >= 0 else lim.max_brake)
            return accel, steer
        if np.abs(action[:, :2]).max() > MAX_TRAJ_M:
            raise ValueError(f"trajectory waypoints beyond {MAX_TRAJ_M} m: {action[:, :2].tolist()}")
        return self.controller(action, float(self.state.ego[EGO_SPEED]))

    def _info(self, infractions) -> dict[str, Any]:
        w = self.world
        return {
            "state": self.state,
            "infractions": infractions,
            "expert": self.expert.act(self.state),
            "progress_m": float(w.ego_s - w.spec.ego_start_s),
            "route_length_m": float(w.route.length),
            "episode_seed": w.spec.seed,
        }


class Observer:
    """What a driver sees of a `World`: the camera frame, optionally the BEV raster, the ego state, and the
    navigator's instruction, re-phrased when the next turn on the route or its spoken distance (rounded to 10 m, as
    in the instruction) changes. The dataset's instruction states the current distance at every keyframe; keeping
    the first phrasing would tell a policy "in 230 m" all the way to the junction, a text it never saw in training.

    Shared by the env and the closed-loop evaluation, so a policy sees the same observations in both.
    """

    def __init__(
        self,
        world: World,
        camera: FrontCamera,
        bev: BevRenderer | None,
        seed: int,
        heldout_instructions: bool = False,
    ):
        self.world, self.camera, self.bev = world, camera, bev
        self.heldout = heldout_instructions
        self._rng = np.random.default_rng([seed, 11])
        self._turn: tuple[str, float | None] | None = None
        self._instruction = ""

    def __call__(self, state: WorldState) -> dict[str, Any]:
        road = self.world.net.road
        obs = {
            "camera": self.camera.render(state, road),
            "ego": state.ego.astype(np.float32),
            "instruction": self.instruction(),
            "command": COMMANDS.index(state.command),
            "speed_limit": np.float32(state.speed_limit),
            "stop_distance": np.float32(state.stop_distance),
            "stop_control": state.stop_control,
        }
        if self.bev is not None:
            obs["bev"] = self.bev.render(state, road)
        return obs

    def instruction(self) -> str:
        w = self.world
        turn, dist = w.route.next_turn(w.ego_s)
        # the junction, and the distance to it as the instruction says it
        key = (turn, None) if dist is None else (turn, round(w.ego_s + dist, 1), max(10, round(dist / 10) * 10))
        if key != self._turn:
            self._turn = key
            self._instruction = instruction(turn, self._rng, heldout=self.heldout, distance_m=dist)
        return self._instruction
