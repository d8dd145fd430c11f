"""Rollout pictures: camera, BEV with the plan drawn on it, and the reasoning text, side by side; GIF writing."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np

from worlddrive.sim.camera import BevConfig, bev_to_rgb

SCALE = 2  # camera pixels are doubled in the panel so text and lights stay readable
TEXT_ROWS = 4


def plan_on_bev(bev_rgb: np.ndarray, plan: np.ndarray, config: BevConfig, colour=(255, 0, 255)) -> np.ndarray:
    """Draw ego-frame waypoints (8, >=2) onto an ego-centric BEV image (H, W, 3)."""
    img = bev_rgb.copy()
    h, w = img.shape[:2]
    row0, col0 = config.ego_row * h, w / 2
    px = np.stack([col0 - plan[:, 1] / config.metres_per_px, row0 - plan[:, 0] / config.metres_per_px], -1)
    pts = np.round(np.concatenate([[[col0, row0]], px]) * 4).astype(np.int32)
    cv2.polylines(img, [pts], False, colour, 1, cv2.LINE_AA, shift=2)
    for p in pts[1:]:
        cv2.circle(img, (int(p[0]) >> 2, int(p[1]) >> 2), 1, colour, -1)
    return img


def panel(camera: np.ndarray, bev_rgb: np.ndarray, text: str, header: str = "") -> np.ndarray:
    """One GIF frame: [camera x2 | BEV scaled to the same height] over a strip of wrapped text. (H, W, 3) uint8."""
    cam = cv2.resize(camera, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_NEAREST)
    h = cam.shape[0]
    bev = cv2.resize(bev_rgb, (h * bev_rgb.shape[1] // bev_rgb.shape[0], h), interpolation=cv2.INTER_NEAREST)
    top = np.concatenate([cam, bev], axis=1)
    width = top.shape[1]
    line_h = 14
    lines = ([header] if header else []) + textwrap.wrap(text, width=width // 7)[:TEXT_ROWS]
    strip = np.full(((TEXT_ROWS + 1) * line_h + 6, width, 3), 20, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(strip, line, (4, 12 + i * line_h), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (235, 235, 235), 1, cv2.LINE_AA)
    return np.concatenate([top, strip], axis=0)


def bev_panel(raster: np.ndarray, plan: np.ndarray | None, config: BevConfig) -> np.ndarray:
    rgb = bev_to_rgb(raster)
    return plan_on_bev(rgb, plan, config) if plan is not None else rgb


def write_gif(frames: list[np.ndarray], path: Path, fps: int = 10) -> Path:
    """Write atomically: a half-written GIF never replaces a good one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    iio.imwrite(tmp, np.stack(frames), extension=".gif", duration=int(1000 / fps), loop=0)
    os.replace(tmp, path)
    return path
