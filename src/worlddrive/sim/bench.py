"""`worlddrive bench sim`: how fast the world runs, renders and turns into training samples on this machine."""

from __future__ import annotations

import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor

from worlddrive.sim.camera import BevRenderer, FrontCamera
from worlddrive.sim.expert import Expert
from worlddrive.sim.scenarios import make_spec
from worlddrive.sim.world import World

BENCH_FAMILY = "urban_mixed"  # the busiest training family: 26 vehicles, 24 walkers, lights and stop signs


def _timed(fn, budget: float) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget:
        fn()
        n += 1
    return n, time.perf_counter() - t0


def _record(seed: int) -> int:
    from worlddrive.data.record import record_episode

    return record_episode(BENCH_FAMILY, seed).num_samples


def _gen_rate(workers: int, episodes: int) -> float:
    t0 = time.perf_counter()
    if workers == 1:
        samples = sum(_record(s) for s in range(episodes))
    else:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            pool.submit(int, 0).result()  # start-up cost is not generation
            t0 = time.perf_counter()
            samples = sum(pool.map(_record, range(episodes)))
    return samples / (time.perf_counter() - t0)


def bench_sim(seconds: float = 5.0) -> dict[str, float]:
    """Steps/s of the world alone and with the expert, camera and BEV frames/s, end-to-end samples/s (1, 2 workers)."""
    world = World(make_spec(BENCH_FAMILY, 0))
    state = world.reset()
    n, dt = _timed(lambda: world.step(0.5, 0.0), seconds / 2)
    sim = n / dt
    state = world.reset()
    expert = Expert(world)
    box = {"s": state}

    def drive():
        out = expert.act(box["s"])
        box["s"] = world.step(out.accel, out.steer)

    n, dt = _timed(drive, seconds / 2)
    sim_expert = n / dt
    cam, bev, road = FrontCamera(), BevRenderer(), world.net.road
    n, dt = _timed(lambda: cam.render(box["s"], road), seconds / 2)
    cam_fps = n / dt
    n, dt = _timed(lambda: bev.render(box["s"], road), seconds / 2)
    bev_fps = n / dt
    world.close()
    episodes = max(2, int(seconds / 2))
    return {
        "sim_steps_per_s": sim,
        "sim_expert_steps_per_s": sim_expert,
        "camera_fps": cam_fps,
        "bev_fps": bev_fps,
        "gen_samples_per_s_1w": _gen_rate(1, episodes),
        "gen_samples_per_s_2w": _gen_rate(2, 2 * episodes),
    }
