"""Render speed of the front camera and the BEV raster on the busy synthetic junction.

    PYTHONPATH=src python benchmarks/bench_render.py [--frames 1000] [--seed 0] [--png docs]

The ego drives its route and the other vehicles and pedestrians move at their speeds, so culling and clipping see
changing views; states are built before timing. Prints per-frame median and p95, then one `RESULT` line last.
`--png DIR` also writes the first frame as DIR/camera_frame.png and DIR/bev_frame.png.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from worlddrive.sim.camera import BevRenderer, FrontCamera, bev_to_rgb
from worlddrive.sim.state import EGO_SPEED, RoadMap, WorldState
from worlddrive.sim.synthetic import synthetic_scene

DT = 0.1  # seconds between frames, the simulator's step


def moving_states(seed: int, n: int) -> tuple[RoadMap, list[WorldState]]:
    """n snapshots of the synthetic scene, everything moved straight ahead at its speed, looping every 5 s."""
    road, first = synthetic_scene(seed)
    states = []
    for i in range(n):
        t = (i % 50) * DT
        s = copy.copy(first)
        s.t = t
        s.ego = first.ego.copy()
        s.ego[1] += first.ego[EGO_SPEED] * t  # heading north along the route
        s.vehicles, s.pedestrians = first.vehicles.copy(), first.pedestrians.copy()
        for rows in (s.vehicles, s.pedestrians):
            rows[:, 0] += rows[:, 3] * np.cos(rows[:, 2]) * t
            rows[:, 1] += rows[:, 3] * np.sin(rows[:, 2]) * t
        states.append(s)
    return road, states


def time_frames(
    render: Callable[[WorldState, RoadMap], np.ndarray], road: RoadMap, states: list[WorldState]
) -> np.ndarray:
    """Per-frame seconds, after one warm-up frame (it builds the map cache)."""
    render(states[0], road)
    out = np.empty(len(states))
    for i, s in enumerate(states):
        t0 = time.perf_counter()
        render(s, road)
        out[i] = time.perf_counter() - t0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", type=Path, help="write the first camera and BEV frames into this folder")
    args = parser.parse_args()

    road, states = moving_states(args.seed, args.frames)
    camera, bev = FrontCamera(), BevRenderer()
    fps = {}
    for name, render in (("camera", camera.render), ("bev", bev.render)):
        t = time_frames(render, road, states)
        fps[name] = len(t) / t.sum()
        print(f"{name}: {len(t)} frames, median {np.median(t) * 1e3:.3f} ms, p95 {np.percentile(t, 95) * 1e3:.3f} ms")
    c = camera.config
    print(f"camera {c.width}x{c.height}, bev {bev.config.width}x{bev.config.height} at {bev.config.metres_per_px} m/px")
    if args.png:
        args.png.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(args.png / "camera_frame.png"), camera.render(states[0], road)[..., ::-1])
        cv2.imwrite(str(args.png / "bev_frame.png"), bev_to_rgb(bev.render(states[0], road))[..., ::-1])
    print(f"RESULT camera_fps={fps['camera']:.0f} bev_fps={fps['bev']:.0f}")


if __name__ == "__main__":
    main()
