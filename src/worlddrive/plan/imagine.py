"""Imagination planning: the world model scores K candidate plans and the best one drives.

DESIGN's loop: "planner: fast path, or imagination (K candidates -> world model -> score -> best)", the deduction
blackboard fed back into the decision. The candidates are the policy's own plan retimed: its path covered to a
fraction of its distance (1, 0.85, ..., 0), so imagination can slow the plan down or stop it, never steer it
elsewhere. A candidate's risk is the bev head's probability that a vehicle or pedestrian occupies the ego's
footprint at one of its future steps, in that candidate's own future pose (the head is conditioned on the candidate,
`BevHead.decode`; the scene is encoded once per frame). A candidate that takes the front bumper past the route's next
stop line also risks the probability that the rules stop the car there: 1 at a stop sign not yet served (the map's
line; the car's odometry knows it came to rest), and with a light head (models/light.py) the probability that the
light is red, or yellow while a comfortable stop is still possible (the expert's rule). The fastest candidate whose
risk stays within `risk_limit` drives; when none does, the least risky.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from worlddrive.models.lateral import along_path
from worlddrive.models.light import LIGHTS
from worlddrive.models.policy import WorldDrivePolicy
from worlddrive.models.world_model import Raster
from worlddrive.sim.geometry import distance_along
from worlddrive.sim.state import CONTROL_NAMES, EGO_SPEED
from worlddrive.sim.vehicle import BicycleLimits

FRACTIONS = (1.0, 0.85, 0.7, 0.55, 0.4, 0.25, 0.1, 0.0)  # K = 8: DESIGN's imagination budget, the plan itself first
# The highest occupancy probability of the ego's footprint a candidate may have. The bev heads trained so far put the
# plan's risk at 0.05 (median) to 0.18 (p99); at 0.5 imagination never intervened. 0.12, chosen from the risks on
# training seeds, drove +0.026 DS [-0.003, +0.059] on them and +0.082 [+0.045, +0.121] on the dev seeds, with 11
# at-fault collisions against 21; a second training seed gained +0.009 there (results/README.md, session 21)
RISK_LIMIT = 0.12
YELLOW_DECEL = 3.5  # m/s^2: at yellow, stop if this braking stops the car 0.5 m before the line (sim/expert.py's rule)


def retime(plan: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Plans (B, W, 3) -> candidates (B, K, W, 3): each waypoint moved back along the plan's own path to fraction
    k of its distance from the ego (0: standing still, facing along the path)."""
    scaled = plan[:, None] * fractions[None, :, None, None].to(plan)  # (B, K, W, 3) a polyline f times as long
    return along_path(scaled, plan)


def footprint(raster: Raster, size: tuple[float, float]) -> torch.Tensor:
    """(H, W) bool: the raster's cells under a box of `size` (length, width) at the ego's pose, half a cell grown
    ahead and to the sides; cells behind its centre's rear half are left out (a follower is not ours to avoid)."""
    xy = raster.centres()  # (H, W, 2)
    length, width = size
    half = raster.cell / 2
    return (xy[..., 0] >= -length / 2) & (xy[..., 0] <= length / 2 + half) & (xy[..., 1].abs() <= width / 2 + half)


def must_stop(control: int, light: np.ndarray | None, line: float, speed: float) -> float:
    """The probability that the rules stop the ego at the next stop line, governed by `control` (CONTROL_NAMES) and
    `line` m from the front bumper: 1 at a stop sign (the world stops reporting a served one's line), P(red), plus
    P(yellow) while 3.5 m/s^2 still stops 0.5 m short (the expert's rule), at a light by the light head's
    probabilities (4,) over `LIGHTS`; 0 at a yield line, without a light head, or with the front already past."""
    if line < 0:
        return 0.0
    if control == CONTROL_NAMES.index("stop"):
        return 1.0
    if control != CONTROL_NAMES.index("light") or light is None:
        return 0.0
    late = line <= speed**2 / (2 * YELLOW_DECEL) + 0.5
    return float(light[LIGHTS.index("red")] + light[LIGHTS.index("yellow")] * (not late))


def stop_line_risk(candidates: np.ndarray, line: float, stop: float) -> np.ndarray:
    """Candidates (K, W, 3) -> (K,) the probability `stop` that each runs the stop line `line` m ahead of the front
    bumper: for a candidate whose last waypoint is past it, else 0."""
    return stop * (distance_along(candidates)[:, -1] > line)


def choose(risk: torch.Tensor, limit: float) -> torch.Tensor:
    """(B, K) risks of candidates ordered fastest first -> (B,) the first within `limit`, else the least risky."""
    ok = risk <= limit
    return torch.where(ok.any(1), ok.float().argmax(1), risk.argmin(1))


class ImaginationPlanner:
    """A policy whose every plan the world model checks before it drives (`--policy RUN@imagine`, or a checkpoint
    whose PolicyConfig.planner is "imagine"): reset, observe, select_action and predict as `WorldDrivePolicy`'s;
    predict also returns each candidate's risk."""

    def __init__(
        self, policy: WorldDrivePolicy, fractions: tuple[float, ...] = FRACTIONS, risk_limit: float = RISK_LIMIT
    ) -> None:
        occ = policy.bev_head().occ  # refuses a policy without one, by name
        if not fractions or fractions[0] != 1.0 or list(fractions) != sorted(fractions, reverse=True):
            raise ValueError(f"fractions {fractions} must start at 1 (the plan itself) and decrease")
        self.policy, self.config, self.risk_limit = policy, policy.config, risk_limit
        self.fractions = torch.tensor(fractions, dtype=torch.float32)
        limits = BicycleLimits()
        self.footprint = footprint(occ, (limits.length, limits.width)).to(policy.device)  # (Ho, Wo)

    def reset(self) -> None:
        self.policy.reset()

    def observe(self, obs: dict[str, Any]) -> None:
        self.policy.observe(obs)

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        return self.predict(obs)["trajectory"]

    @torch.no_grad()
    def imagine(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """A history batch -> candidates (B, K, W, 3) fastest first, and the occupancy the world model imagines
        around each at each of its future poses, (B, K, T, 2, Ho, Wo) probabilities (vehicles, pedestrians)."""
        plan, scene = self.policy.plan_and_scene(batch)  # (B, W, 3)
        candidates = retime(plan, self.fractions)  # (B, K, W, 3)
        # the first is the plan as the fast path drives it: moved onto its own polyline it changes where the plan
        # doubles back (a standing plan's sideways jitter: up to 1.2 m, and +0.046 DS on dev seeds, session 21)
        candidates[:, 0] = plan
        occ, _ = self.policy.world_model.decode(scene, candidates)  # (B, K, T, 2, Ho, Wo) logits
        # the occupancy loss weighed occupied cells occ_pos_weight times: shifting the logit back calibrates it
        return candidates, torch.sigmoid(occ.float() - math.log(self.config.occ_pos_weight))

    def risk(self, occupancy: torch.Tensor) -> torch.Tensor:
        """(B, K, T, 2, Ho, Wo) imagined occupancy -> (B, K) the most likely occupied footprint cell of each."""
        return occupancy[..., self.footprint].flatten(2).amax(-1)

    def line_risk(self, obs: dict[str, Any], batch: dict[str, Any], candidates: np.ndarray) -> np.ndarray:
        """(K,) each candidate's risk of running the next stop line (`must_stop`, `stop_line_risk`); the light head
        runs only when a light governs it."""
        control, line = int(obs["stop_control"]), float(obs["stop_distance"])
        light = None
        if control == CONTROL_NAMES.index("light") and line >= 0:
            probs = self.policy.light_probs(batch)
            light = None if probs is None else probs[0].cpu().numpy()
        return stop_line_risk(candidates, line, must_stop(control, light, line, float(obs["ego"][EGO_SPEED])))

    def predict(self, obs: dict[str, Any], reason: bool = False) -> dict:
        """trajectory (W, 3) (the chosen candidate), samples (K, W, 3) (every candidate), risk (K,), chosen, fraction
        (of the plan's distance it covers), occupancy (T, 2, Ho, Wo) imagined around it, and reasoning text (None
        unless `reason`)."""
        self.policy.observe(obs)
        batch = self.policy.history_batch()
        candidates, occupancy = self.imagine(batch)
        samples = candidates[0].float().cpu().numpy()
        line = torch.from_numpy(self.line_risk(obs, batch, samples)).to(occupancy)
        risk = torch.maximum(self.risk(occupancy), line[None])  # (1, K)
        k = int(choose(risk, self.risk_limit)[0])
        return {
            "trajectory": samples[k],
            "samples": samples,
            "risk": risk[0].cpu().numpy(),
            "chosen": k,
            "fraction": float(self.fractions[k]),
            "occupancy": occupancy[0, k].cpu().numpy(),
            "reasoning": self.policy.generate_reasoning(batch)[0] if reason else None,
        }
