"""Plain-array snapshots of the world: the one contract between the simulator and everything that reads it.

Coordinates are the SUMO network's metric frame: x east, y north, metres; yaw in radians, counter-clockwise from +x.
Renderers, the expert, the labeller and the metrics read these arrays and never touch SUMO, so each of them can be
tested on a hand-made `WorldState`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

# Light states, shared by `WorldState.light_state`, the BEV raster and the labels.
GREEN, YELLOW, RED = 0, 1, 2
LIGHT_NAMES = ("green", "yellow", "red")

# Vehicle kinds.
CAR, TRUCK, PARKED = 0, 1, 2

# Sign kinds.
STOP_SIGN, YIELD_SIGN, SPEED_SIGN = 0, 1, 2
SIGN_NAMES = ("stop", "yield", "speed limit")

# What governs the ego's next stop line on its route, as a navigation map knows it (the light's colour it does not).
NO_CONTROL, LIGHT_CONTROL, STOP_CONTROL, YIELD_CONTROL = 0, 1, 2, 3
CONTROL_NAMES = ("none", "light", "stop", "yield")
STOP_HORIZON = 100.0  # m: a stop line farther ahead than this is reported as none
# A stop sign is served once the ego has come to rest (below STOP_REST_SPEED, its front within STOP_REST_REACH of the
# line) and STOP_WAIT_S have passed: the expert's rule, and what the world reports (the line is then no longer next).
STOP_REST_SPEED, STOP_REST_REACH, STOP_WAIT_S = 0.3, 4.0, 1.0  # m/s, m, s

# Lane-marking kinds.
DASHED_WHITE, SOLID_WHITE, SOLID_YELLOW = 0, 1, 2

# Pedestrian intentions.
WAIT, CROSS = 0, 1

# Named slices of the ego vector (openpilot-style), shape (7,).
EGO_X, EGO_Y, EGO_YAW, EGO_SPEED, EGO_ACCEL, EGO_STEER, EGO_YAW_RATE = range(7)


@dataclass
class RoadMap:
    """Static geometry of one layout, read once from the SUMO network."""

    drivable: list[np.ndarray]  # polygons (K, 2): lanes and junction areas cars may use
    sidewalks: list[np.ndarray]  # polygons (K, 2)
    crosswalks: list[np.ndarray]  # polygons (4, 2): each a rectangle across the road
    markings: list[np.ndarray]  # polylines (K, 2)
    marking_kind: np.ndarray  # (M,) int8, DASHED_WHITE / SOLID_WHITE / SOLID_YELLOW
    stop_lines: np.ndarray  # (Q, 2, 2) float32, two end points each
    lane_centers: dict[str, np.ndarray] = field(default_factory=dict)  # lane id -> polyline (K, 2)
    lane_width: dict[str, float] = field(default_factory=dict)
    lane_speed: dict[str, float] = field(default_factory=dict)  # lane id -> speed limit, m/s
    name: str = ""


def value_eq(a: object, b: object) -> bool:
    """Field-by-field equality that compares NumPy arrays by value (dataclass `==` cannot)."""
    if type(a) is not type(b):
        return False
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if not (np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y):
            return False
    return True


@dataclass(eq=False)
class WorldState:
    """Everything true about one instant. Arrays are float32 unless noted; every (N, ·) may have N = 0."""

    t: float  # seconds since episode start
    ego: np.ndarray  # (7,) see EGO_* slices
    ego_size: tuple[float, float]  # (length, width), metres
    vehicles: np.ndarray  # (N, 6) x, y, yaw, speed, length, width; x, y is the box centre
    vehicle_kind: np.ndarray  # (N,) int8 CAR / TRUCK / PARKED
    vehicle_ids: list[str]
    pedestrians: np.ndarray  # (M, 4) x, y, yaw, speed
    pedestrian_intent: np.ndarray  # (M,) int8 WAIT / CROSS (the truth; the body language shows it before they step)
    pedestrian_ids: list[str]
    light_pos: np.ndarray  # (L, 2) pole position next to the stop line it controls
    light_yaw: np.ndarray  # (L,) direction the lamp faces (towards approaching traffic)
    light_state: np.ndarray  # (L,) int8 GREEN / YELLOW / RED
    light_stop_line: np.ndarray  # (L, 2, 2) the stop line each light controls
    sign_pos: np.ndarray  # (S, 2)
    sign_yaw: np.ndarray  # (S,) direction the plate faces
    sign_kind: np.ndarray  # (S,) int8 STOP_SIGN / YIELD_SIGN / SPEED_SIGN
    sign_value: np.ndarray  # (S,) speed limit in km/h for SPEED_SIGN, else 0
    sign_stop_line: np.ndarray  # (S, 2, 2) the line a STOP_SIGN / YIELD_SIGN governs (zeros for SPEED_SIGN)
    route: np.ndarray  # (P, 2) the ego's planned path centreline, world frame
    speed_limit: float  # m/s at the ego's position
    command: str  # navigation command: "straight" / "left" / "right" / "follow"
    # the route's next stop line, from the ego's front bumper along the route (1 m past it still counts), and its
    # control; none within STOP_HORIZON: STOP_HORIZON and NO_CONTROL
    stop_distance: float = STOP_HORIZON  # m
    stop_control: int = NO_CONTROL  # NO_CONTROL / LIGHT_CONTROL / STOP_CONTROL / YIELD_CONTROL

    __eq__ = value_eq


def wrap_angle(a):
    """Angle(s) in radians wrapped to [-pi, pi)."""
    return (a + np.pi) % (2 * np.pi) - np.pi


def empty(cols: int) -> np.ndarray:
    return np.zeros((0, cols), np.float32)


def to_ego_frame(points: np.ndarray, ego: np.ndarray) -> np.ndarray:
    """World (..., 2) points -> ego frame (x forward, y left)."""
    c, s = np.cos(ego[EGO_YAW]), np.sin(ego[EGO_YAW])
    d = points[..., :2] - ego[EGO_X : EGO_Y + 1]
    return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], axis=-1)


def to_world_frame(points: np.ndarray, ego: np.ndarray) -> np.ndarray:
    """Ego-frame (..., 2) points -> world frame."""
    c, s = np.cos(ego[EGO_YAW]), np.sin(ego[EGO_YAW])
    x, y = points[..., 0], points[..., 1]
    return np.stack([ego[EGO_X] + c * x - s * y, ego[EGO_Y] + s * x + c * y], axis=-1)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, >=6) rows x, y, yaw, speed, length, width -> (N, 4, 2) corners, counter-clockwise from front-left."""
    x, y, yaw, length, width = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 4], boxes[:, 5]
    c, s = np.cos(yaw), np.sin(yaw)
    hl, hw = length / 2, width / 2
    lx = np.stack([hl, -hl, -hl, hl], axis=1)  # (N, 4)
    ly = np.stack([hw, hw, -hw, -hw], axis=1)
    return np.stack(
        [x[:, None] + c[:, None] * lx - s[:, None] * ly, y[:, None] + s[:, None] * lx + c[:, None] * ly], -1
    )
