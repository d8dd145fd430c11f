"""The ego vehicle: a kinematic bicycle at 10 Hz with actuator limits, and the controller that follows a trajectory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worlddrive.sim.state import EGO_ACCEL, EGO_SPEED, EGO_STEER, EGO_X, EGO_Y, EGO_YAW, EGO_YAW_RATE, wrap_angle

DT = 0.1  # simulation step, s
WAYPOINT_DT = 0.5  # spacing of trajectory waypoints, s
N_WAYPOINTS = 8
WAYPOINT_TIMES = WAYPOINT_DT * np.arange(1, N_WAYPOINTS + 1)  # (W,) s after now


@dataclass
class BicycleLimits:
    wheelbase: float = 2.7
    length: float = 4.6
    width: float = 1.9
    max_steer: float = 0.6  # rad
    max_steer_rate: float = 0.7  # rad/s
    max_accel: float = 3.0  # m/s^2
    max_brake: float = 8.0  # m/s^2
    max_speed: float = 25.0  # m/s


class KinematicBicycle:
    """Rear-axle kinematic bicycle. `step` clips the command to the limits, so no input can produce a jump."""

    def __init__(self, limits: BicycleLimits | None = None):
        self.limits = limits or BicycleLimits()
        self.state = np.zeros(7, np.float64)  # see EGO_* slices

    def reset(self, x: float, y: float, yaw: float, speed: float) -> np.ndarray:
        self.state[:] = 0
        self.state[[EGO_X, EGO_Y, EGO_YAW, EGO_SPEED]] = x, y, yaw, speed
        return self.state.copy()

    def step(self, accel: float, steer: float, dt: float = DT) -> np.ndarray:
        lim = self.limits
        if not (np.isfinite(accel) and np.isfinite(steer)):
            raise ValueError(f"ego command must be finite, got accel={accel}, steer={steer}")
        s = self.state
        accel = float(np.clip(accel, -lim.max_brake, lim.max_accel))
        target = float(np.clip(steer, -lim.max_steer, lim.max_steer))
        steer = s[EGO_STEER] + np.clip(target - s[EGO_STEER], -lim.max_steer_rate * dt, lim.max_steer_rate * dt)
        v0 = s[EGO_SPEED]
        v1 = float(np.clip(v0 + accel * dt, 0.0, lim.max_speed))
        v = 0.5 * (v0 + v1)
        yaw_rate = v * np.tan(steer) / lim.wheelbase
        yaw = s[EGO_YAW] + yaw_rate * dt
        mid = s[EGO_YAW] + 0.5 * yaw_rate * dt
        s[EGO_X] += v * np.cos(mid) * dt
        s[EGO_Y] += v * np.sin(mid) * dt
        s[EGO_YAW] = wrap_angle(yaw)
        s[EGO_SPEED] = v1
        s[EGO_ACCEL] = (v1 - v0) / dt
        s[EGO_STEER] = steer
        s[EGO_YAW_RATE] = yaw_rate
        return s.copy()


def pure_pursuit(path: np.ndarray, speed: float, wheelbase: float) -> float:
    """Steering angle that reaches a lookahead point on `path` (K, 2), given in the ego frame (x forward, y left)."""
    lookahead = max(3.0, 0.5 * speed + 1.5)
    d = np.linalg.norm(path, axis=1)
    ahead = np.nonzero((d >= lookahead) & (path[:, 0] > 0))[0]
    target = path[ahead[0]] if len(ahead) else path[-1]
    ld2 = float(target @ target)
    if ld2 < 1e-6:
        return 0.0
    return float(np.arctan2(2.0 * wheelbase * target[1], ld2))


class TrajectoryController:
    """Turns 8 ego-frame waypoints (x, y, yaw; 0.5 s apart) into (accel, steer): speed from the first waypoints'
    spacing, steering by pure pursuit along the waypoint polyline."""

    def __init__(self, limits: BicycleLimits | None = None, gain: float = 1.5):
        self.limits = limits or BicycleLimits()
        self.gain = gain

    def __call__(self, trajectory: np.ndarray, speed: float) -> tuple[float, float]:
        traj = np.asarray(trajectory, np.float64).reshape(N_WAYPOINTS, -1)
        if not np.isfinite(traj).all():
            raise ValueError("trajectory contains NaN or inf")
        pts = np.concatenate([[[0.0, 0.0]], traj[:, :2]])  # (9, 2)
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1) / WAYPOINT_DT  # (8,) speeds between waypoints
        target_speed = 0.5 * (seg[0] + seg[1])  # speed wanted about 0.5 s from now
        accel = self.gain * (target_speed - speed)
        dense = _densify(pts)
        steer = pure_pursuit(dense, max(speed, target_speed), self.limits.wheelbase) if seg.sum() > 0.2 else 0.0
        return float(accel), steer


def _densify(pts: np.ndarray, step: float = 0.5) -> np.ndarray:
    s = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    if s[-1] < 1e-6:
        return pts
    u = np.arange(0, s[-1] + 1e-9, step)
    return np.stack([np.interp(u, s, pts[:, 0]), np.interp(u, s, pts[:, 1])], 1)
