"""Rollout GIFs: drive one episode and keep every n-th step as a panel (camera, BEV with the plan, reasoning)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worlddrive.eval.closed_loop import EpisodeResult, run_episode
from worlddrive.eval.drivers import REPLAN_EVERY, make_driver
from worlddrive.eval.visualize import SCALE, bev_panel, imagined_column, panel, write_gif
from worlddrive.sim.camera import BevConfig, BevRenderer, FrontCamera
from worlddrive.sim.state import EGO_SPEED

REASON_EVERY = 10  # a learned policy writes its reasoning once a second in a GIF (generation is slow)


@dataclass(frozen=True)
class RolloutJob:
    driver: str  # a make_driver spec
    family: str
    seed: int
    path: str  # the GIF to write
    every: int = 2  # keep every n-th 10 Hz step
    expert_progress_m: float | None = None
    threads: int = 0
    replan_every: int = REPLAN_EVERY


def render_rollout(job: RolloutJob) -> EpisodeResult:
    """Drive (family, seed) with the driver and write the GIF atomically; the result as `run_episode` gives it.

    The driver is deterministic, so the episode is the one the evaluation scored."""
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    driver = make_driver(job.driver, reason_every=REASON_EVERY, plan=True, replan_every=job.replan_every)
    cam, bev_cfg = FrontCamera(), BevConfig()
    bev = BevRenderer(bev_cfg)
    frames: list[np.ndarray] = []

    def on_step(world, state, out):
        if round(state.t * 10) % job.every == 0:
            road = world.net.road
            speed = f"v={state.ego[EGO_SPEED] * 3.6:3.0f} km/h"
            header = f"{driver.name} | {job.family} seed {job.seed} | t={state.t:4.1f}s {speed} | {state.command}"
            camera, imagined = cam.render(state, road), None
            pred = getattr(driver, "prediction", {})  # a PolicyDriver's last replan
            if "occupancy" in pred:  # imagination: what the world model saw ahead of the plan it chose
                header += f" | plan x{pred['fraction']:.2f}, risk {pred['risk'][pred['chosen']]:.2f}"
                imagined = imagined_column(pred["occupancy"], camera.shape[0] * SCALE, bev_cfg)
            frames.append(
                panel(
                    camera,
                    bev_panel(bev.render(state, road), out.trajectory, bev_cfg),
                    driver.reasoning or "",
                    header,
                    imagined,
                )
            )

    res = run_episode(job.family, job.seed, driver, job.expert_progress_m, on_step=on_step)
    if frames:
        write_gif(frames, Path(job.path), fps=max(1, 10 // job.every))
    return res
