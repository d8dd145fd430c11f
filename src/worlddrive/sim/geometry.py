"""Box geometry of agents: oriented boxes, constant-velocity roll-outs and the separating-axis overlap test. It lives
with the world (it needs only `WorldState`) so that the metric and, later, planners share one definition of a
time-to-collision conflict."""

from __future__ import annotations

import numpy as np

from worlddrive.sim.state import EGO_SPEED, EGO_YAW, WorldState, to_ego_frame

PED_SIZE = 0.5  # m, pedestrians are square boxes
TTC_TIMES = np.arange(10) * 0.1  # (T,) s, row 0 is now


def agent_boxes(state: WorldState) -> np.ndarray:
    """Vehicles then pedestrians as (A, 6) rows x, y, yaw, speed, length, width."""
    peds = state.pedestrians[:, :4]  # (M, 4)
    ped_boxes = np.concatenate([peds, np.full((len(peds), 2), PED_SIZE)], axis=1)
    return np.concatenate([state.vehicles[:, :6], ped_boxes]).astype(np.float64)


def projected_overlap(
    ego: np.ndarray, ego_size: tuple[float, float], agents: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Roll ego and agents forward at constant velocity over TTC_TIMES, all in the ego's (fixed) frame.

    Returns overlap (T, A), row 0 being the current contacts, and ahead (A,): agent centre in front of the ego centre.
    """
    rel = to_ego_frame(agents[:, :2], ego)  # (A, 2)
    dyaw = agents[:, 2] - ego[EGO_YAW]  # (A,)
    rel_v = agents[:, 3:4] * np.stack([np.cos(dyaw), np.sin(dyaw)], -1)  # (A, 2) agent velocity, ego frame
    rel_v[:, 0] -= ego[EGO_SPEED]
    rel_t = rel + TTC_TIMES[:, None, None] * rel_v  # (T, A, 2)
    return boxes_overlap(rel_t, dyaw, np.asarray(ego_size) / 2, agents[:, 4:6] / 2), rel[:, 0] > 0


def ttc_conflict(overlap: np.ndarray, ahead: np.ndarray) -> bool:
    """An agent ahead, not touching now, whose constant-velocity box meets the ego's within TTC_TIMES."""
    return bool(overlap[:, ahead & ~overlap[0]].any())


def boxes_overlap(rel: np.ndarray, dyaw: np.ndarray, ego_half: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Separating-axis test of oriented boxes against the ego box, axis-aligned at the origin of its own frame.

    rel (..., A, 2) agent centres, dyaw (A,) agent yaw relative to the ego, ego_half (2,) and half (A, 2) half
    length / width. Two rectangles are disjoint iff one of their four edge directions separates them.
    """
    cos, sin = np.cos(dyaw), np.sin(dyaw)
    ac, as_ = np.abs(cos), np.abs(sin)
    x, y = rel[..., 0], rel[..., 1]
    el, ew = ego_half
    hl, hw = half[:, 0], half[:, 1]
    apart = np.abs(x) > el + hl * ac + hw * as_  # ego's long axis
    apart |= np.abs(y) > ew + hl * as_ + hw * ac  # ego's lateral axis
    apart |= np.abs(x * cos + y * sin) > hl + el * ac + ew * as_  # agent's long axis
    apart |= np.abs(y * cos - x * sin) > hw + el * as_ + ew * ac  # agent's lateral axis
    return ~apart


def distance_along(waypoints: np.ndarray) -> np.ndarray:
    """Distance travelled along ego-frame waypoints (..., T, >= 2) from the ego's origin through each, (..., T) m."""
    xy = np.asarray(waypoints, np.float64)[..., :2]
    steps = np.diff(xy, axis=-2, prepend=np.zeros_like(xy[..., :1, :]))  # (..., T, 2), from the origin first
    return np.hypot(steps[..., 0], steps[..., 1]).cumsum(-1)
