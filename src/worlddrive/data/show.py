"""Look at a dataset: a text summary of what it holds and a contact sheet of samples with their reasoning."""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure

from worlddrive.data.dataset import WorldDriveDataset
from worlddrive.data.format import load_info, open_shard, shard_paths
from worlddrive.sim.camera import bev_to_rgb
from worlddrive.sim.state import EGO_SPEED, LIGHT_NAMES

COLUMNS = 4  # samples per row of the contact sheet


def summary(path: Path) -> str:
    """Counts, samples per family, mean speed, current light state histogram, mean reasoning length."""
    info = load_info(path)
    per_family: Counter[str] = Counter()
    lights: Counter[int] = Counter()
    speeds, words = [], []
    for shard in shard_paths(path):
        group = open_shard(shard)
        families = [group.attrs["families"][f] for f in group["episode_family"][...]]
        per_family.update(families[e] for e in group["episode"][...])
        speeds.append(group["ego"][:, EGO_SPEED])
        lights.update(group["lights"][:, 0].tolist())
        words += [len(t.split()) for t in group["reasoning"][...].tolist()]
    n = info["counts"]["samples"]
    light_names = {-1: "none", **dict(enumerate(LIGHT_NAMES))}
    return "\n".join(
        [
            f"WorldDrive dataset {path}: {info['counts']['episodes']} episodes, {n} samples, "
            f"{info['counts']['frames']} frames in {info['counts']['shards']} shards",
            f"camera {info['camera_shape']}  bev {info['bev_shape']}  {info['fps']} Hz keyframes",
            "samples per family: " + ", ".join(f"{f} {per_family[f]}" for f in info["families"]),
            f"mean ego speed: {np.concatenate(speeds).mean() if n else float('nan'):.2f} m/s",
            "light ahead now: " + ", ".join(f"{name} {lights[k] / max(n, 1):.0%}" for k, name in light_names.items()),
            f"mean reasoning length: {np.mean(words) if words else float('nan'):.1f} words",
        ]
    )


def contact_sheet(path: Path, out_png: Path, n: int = 12) -> None:
    """A grid of n samples spread over the dataset: camera frame, BEV beside it, reasoning text under them."""
    ds = WorldDriveDataset(path, split="all")
    picks = np.unique(np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int))
    rows = -(-len(picks) // COLUMNS)
    fig = Figure(figsize=(4.5 * COLUMNS, 2.7 * rows))
    for cell, i in enumerate(picks):
        item = ds[int(i)]
        ax = fig.add_subplot(rows, COLUMNS, cell + 1)
        ax.imshow(_tile(item["camera"][-1].numpy(), item["bev"].numpy()))
        ax.set_axis_off()
        ax.set_title(f"#{i}  {item['instruction']}", fontsize=7, loc="left", wrap=True)
        ax.text(0, -0.03, textwrap.fill(item["reasoning"], 70), transform=ax.transAxes, va="top", fontsize=6.5)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


def _tile(camera: np.ndarray, bev: np.ndarray) -> np.ndarray:
    """(3, H, W) camera and (C, Hb, Wb) BEV -> (H, W + gap + W', 3): the BEV scaled to the camera's height."""
    image = camera.transpose(1, 2, 0)  # (H, W, 3)
    h = image.shape[0]
    top_view = bev_to_rgb(bev)
    top_view = cv2.resize(
        top_view, (round(top_view.shape[1] * h / top_view.shape[0]), h), interpolation=cv2.INTER_NEAREST
    )
    return np.concatenate([image, np.full((h, max(h // 16, 1), 3), 255, np.uint8), top_view], axis=1)


def show(path: Path, out_png: Path, n: int = 12) -> str:
    """Save the contact sheet and return the summary text (the caller prints it)."""
    contact_sheet(Path(path), Path(out_png), n)
    return summary(Path(path))
