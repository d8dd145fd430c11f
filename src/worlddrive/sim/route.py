"""The ego's path through a network: lanes chosen edge by edge, joined through junctions, resampled by arc length.

The expert follows this path, the camera draws it on the BEV, and the metric measures progress along it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worlddrive.sim.network import Network, is_junction

STEP_M = 0.5  # resampling step of the path


@dataclass
class RoutePath:
    """A resampled path: points every STEP_M metres with the lane, speed limit and turn direction at each point."""

    xy: np.ndarray  # (P, 2)
    s: np.ndarray  # (P,) arc length
    yaw: np.ndarray  # (P,)
    curvature: np.ndarray  # (P,) 1/m, signed
    speed_limit: np.ndarray  # (P,) m/s
    lane: list[str]  # (P,) lane id at each point
    turn_s: np.ndarray  # (J,) arc length where each junction starts
    turn_dir: list[str]  # (J,) "straight" / "left" / "right" per junction
    edges: list[str]

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def project(self, xy: np.ndarray, hint: int | None = None, window: int = 120) -> tuple[int, float, float]:
        """Nearest path index, arc length and signed lateral offset (left positive) of a point."""
        lo, hi = (0, len(self.s)) if hint is None else (max(hint - window // 4, 0), min(hint + window, len(self.s)))
        d = self.xy[lo:hi] - xy
        i = lo + int(np.argmin((d * d).sum(1)))
        t = np.array([np.cos(self.yaw[i]), np.sin(self.yaw[i])])
        rel = xy - self.xy[i]
        return i, float(self.s[i] + rel @ t), float(t[0] * rel[1] - t[1] * rel[0])

    def command_at(self, s: float, horizon: float = 60.0) -> str:
        """The navigation command: the next junction's turn within `horizon` metres, else keep following the road."""
        turn, dist = self.next_turn(s - 5.0)
        return turn if dist is not None and dist - 5.0 < horizon else "follow"

    def next_turn(self, s: float) -> tuple[str, float | None]:
        """The next junction's turn after arc length s and its distance, however far ("follow", None if none)."""
        ahead = np.nonzero(self.turn_s > s)[0]
        if not len(ahead):
            return "follow", None
        return self.turn_dir[ahead[0]], float(self.turn_s[ahead[0]] - s)


_DIRS = {"s": "straight", "l": "left", "L": "left", "r": "right", "R": "right", "t": "left"}


def build_route(network: Network, edges: list[str], start_lane: int = 0) -> RoutePath:
    """Join the lanes of `edges` (changing lanes where the next turn needs another one) into one resampled path."""
    net = network.net
    pieces: list[tuple[np.ndarray, str]] = []
    turns: list[tuple[int, str]] = []  # (piece index where the junction starts, direction)
    lane = net.getEdge(edges[0]).getLanes()[_clamp_lane(net.getEdge(edges[0]), start_lane)]
    for i, edge_id in enumerate(edges):
        edge = net.getEdge(edge_id)
        if i + 1 < len(edges):
            nxt = net.getEdge(edges[i + 1])
            ok = [
                c
                for ln in edge.getLanes()
                for c in ln.getOutgoing()
                if c.getTo() == nxt and ln.allows("passenger") and c.getToLane().allows("passenger")
            ]
            if not ok:
                raise ValueError(f"route edges {edge_id} -> {edges[i + 1]} are not connected")
            conn = min(ok, key=lambda c: abs(c.getFromLane().getIndex() - lane.getIndex()))
            if conn.getDirection() == "t":
                raise ValueError(f"route makes a U-turn from {edge_id} to {edges[i + 1]}")
            target = conn.getFromLane()
        else:
            conn, target = None, lane
        pieces.append((_lane_change(lane, target), target.getID()))
        if conn is not None and is_junction(edge.getToNode()):
            turns.append((len(pieces), _DIRS.get(conn.getDirection(), "straight")))
        if conn is not None:
            via = conn.getViaLaneID()
            while via:  # a junction may split a connection into several internal lanes
                via_lane = net.getLane(via)
                pieces.append((np.asarray(via_lane.getShape(), np.float64), via))
                via = next((c.getViaLaneID() for c in via_lane.getOutgoing() if c.getViaLaneID()), "")
            lane = conn.getToLane()
    return _resample(network, pieces, turns, edges)


def _clamp_lane(edge, index: int) -> int:
    car = [ln.getIndex() for ln in edge.getLanes() if ln.allows("passenger")]
    return int(np.clip(index, car[0], car[-1]))


def _lane_change(src, dst) -> np.ndarray:
    """Centreline along an edge that moves from lane `src` to lane `dst` with a smooth S over the edge's middle."""
    a = np.asarray(src.getShape(), np.float64)
    if src.getID() == dst.getID():
        return a
    b = np.asarray(dst.getShape(), np.float64)
    n = max(len(a), len(b), 20)
    a, b = _resample_n(a, n), _resample_n(b, n)
    u = np.linspace(0, 1, n)
    w = np.clip((u - 0.2) / 0.5, 0, 1)
    w = w * w * (3 - 2 * w)
    return (1 - w)[:, None] * a + w[:, None] * b


def _resample_n(pts: np.ndarray, n: int) -> np.ndarray:
    s = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    u = np.linspace(0, s[-1], n)
    return np.stack([np.interp(u, s, pts[:, 0]), np.interp(u, s, pts[:, 1])], 1)


def _resample(
    network: Network, pieces: list[tuple[np.ndarray, str]], turns: list[tuple[int, str]], edges: list[str]
) -> RoutePath:
    pts, lanes, starts = [], [], []
    total = 0
    for shape, lane_id in pieces:
        if pts and np.linalg.norm(pts[-1][-1] - shape[0]) < 1e-3:
            shape = shape[1:]
        starts.append(total)
        pts.append(shape)
        lanes += [lane_id] * len(shape)
        total += len(shape)
    raw = np.concatenate(pts)
    seg = np.linalg.norm(np.diff(raw, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 1e-3])
    raw, lanes_raw = raw[keep], [ln for ln, k in zip(lanes, keep, strict=True) if k]
    raw_s = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(raw, axis=0), axis=1))])
    s = np.arange(0, raw_s[-1], STEP_M)
    xy = np.stack([np.interp(s, raw_s, raw[:, 0]), np.interp(s, raw_s, raw[:, 1])], 1)
    idx = np.clip(np.searchsorted(raw_s, s, side="right"), 0, len(raw_s) - 1)  # end point of the segment
    lane = [lanes_raw[i] for i in idx]
    d = np.gradient(xy, axis=0)
    yaw = np.unwrap(np.arctan2(d[:, 1], d[:, 0]))
    kernel = np.ones(9) / 9  # 4 m window: lane shapes are polylines, their kinks are not real curvature
    curvature = np.convolve(np.gradient(yaw) / STEP_M, kernel, mode="same")
    speeds = network.road.lane_speed
    limit = np.array([speeds.get(ln, 13.89) for ln in lane], np.float32)
    # Map each junction's first raw point to path arc length.
    raw_index = np.cumsum(keep) - 1
    turn_s = np.array([raw_s[raw_index[min(starts[k], len(raw_index) - 1)]] for k, _ in turns if k < len(starts)])
    return RoutePath(
        xy=xy,
        s=s,
        yaw=yaw,
        curvature=curvature,
        speed_limit=limit,
        lane=lane,
        turn_s=turn_s,
        turn_dir=[d for k, d in turns if k < len(starts)],
        edges=list(edges),
    )
