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
IMAGINED_STEPS = (1, 3, 5, 7)  # the future steps of imagined occupancy a panel shows: +1, +2, +3, +4 s


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


def imagined_column(occupancy: np.ndarray, height: int, config: BevConfig) -> np.ndarray:
    """Imagined occupancy (T, 2, Ho, Wo) (vehicles, pedestrians), each step in the ego's own frame then, as a column
    of `IMAGINED_STEPS` tiles `height` tall: vehicles red, pedestrians cyan, the ego's cell outlined."""
    side = height // len(IMAGINED_STEPS)
    tiles = []
    for t in IMAGINED_STEPS:
        vehicles, pedestrians = occupancy[t]
        rgb = (np.stack([vehicles, pedestrians, pedestrians], -1).clip(0, 1) * 255).astype(np.uint8)
        tile = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_NEAREST)
        row, col = int(config.ego_row * side), side // 2
        cv2.rectangle(tile, (col - 2, row - 4), (col + 2, row + 4), (255, 255, 255), 1)
        cv2.putText(tile, f"+{(t + 1) / 2:g}s", (2, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (235, 235, 235), 1)
        tiles.append(tile)
    column = np.concatenate(tiles, axis=0)
    return np.pad(column, ((0, height - column.shape[0]), (0, 0), (0, 0)))


def panel(
    camera: np.ndarray, bev_rgb: np.ndarray, text: str, header: str = "", imagined: np.ndarray | None = None
) -> np.ndarray:
    """One GIF frame: [camera x2 | BEV scaled to the same height | imagined occupancy, when given] over a strip of
    wrapped text. (H, W, 3) uint8."""
    cam = cv2.resize(camera, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_NEAREST)
    h = cam.shape[0]
    bev = cv2.resize(bev_rgb, (h * bev_rgb.shape[1] // bev_rgb.shape[0], h), interpolation=cv2.INTER_NEAREST)
    top = np.concatenate([cam, bev] + ([imagined] if imagined is not None else []), axis=1)
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
