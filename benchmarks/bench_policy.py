"""Decision latency of learned policies in the 10 Hz loop (openpilot modeld style): DESIGN's real-time targets are a
fast-path decision p95 <= 15 ms and an imagination decision (`RUN@imagine`, K = 8 candidates) p95 <= 60 ms on 2 CPU
cores, with no missed 100 ms tick.

    PYTHONPATH=src python benchmarks/bench_policy.py [--policy builtin,runs/x,runs/a+runs/b] [--steps 300] [--threads 2]

A folder `worlddrive export` wrote runs on ONNX Runtime (`--policy runs/x_int8`), timed the same way: one decision
end to end, the eager parts (frame embedding, history, pace) included.

The expert drives one `urban_mixed` episode in the gymnasium env and its camera observations are kept (rendering is
not timed). Each policy then sees them one by one as in closed loop: `select_action` (history update, one forward
pass, no reasoning) every step, i.e. `--replan-every 1`, the worst case; the first 10 decisions warm up and are not
counted. Policies are timed in turn on the same observations, so compare their ratios rather than absolute times on
a shared machine. Prints per-policy median / p95 / max, then one `RESULT` line per policy last.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

import worlddrive.sim  # noqa: F401  registers worlddrive/Drive-v0
from worlddrive.eval.drivers import PlanEnsemble, load_policy
from worlddrive.models import WorldDrivePolicy

TICK_S = 0.1  # the loop's period: a decision slower than this misses a tick
WARMUP = 10


def observations(steps: int, seed: int) -> list[dict]:
    """`steps` env observations of one expert-driven urban_mixed episode (fewer if it ends first)."""
    env = gym.make("worlddrive/Drive-v0", config={"family": "urban_mixed", "bev": False})
    obs, info = env.reset(seed=seed)
    out = [obs]
    while len(out) < steps:
        obs, _, terminated, truncated, info = env.step(info["expert"].trajectory)
        out.append(obs)
        if terminated or truncated:
            break
    env.close()
    return out


def decision_times(policy: WorldDrivePolicy | PlanEnsemble, obs: list[dict]) -> np.ndarray:
    """Seconds per `select_action` call after the warm-up."""
    policy.reset()
    times = np.empty(len(obs))
    for i, o in enumerate(obs):
        t0 = time.perf_counter()
        policy.select_action(o)
        times[i] = time.perf_counter() - t0
    return times[WARMUP:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--policy",
        default="builtin",
        help="comma-separated: builtin or RUN folders (RUN@PACE, RUN@imagine, RUN@fast, ensembles A+B)",
    )
    parser.add_argument("--steps", type=int, default=300, help="env steps (decisions) per policy")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps <= WARMUP:
        parser.error(f"--steps must exceed the {WARMUP} warm-up decisions")

    torch.set_num_threads(args.threads)
    obs = observations(args.steps, args.seed)
    results = []
    for spec in args.policy.split(","):
        policy = load_policy(spec)
        t = decision_times(policy, obs) * 1e3
        missed = int((t > TICK_S * 1e3).sum())
        print(
            f"{spec}: {len(t)} decisions on {args.threads} threads, median {np.median(t):.1f} ms, "
            f"p95 {np.percentile(t, 95):.1f} ms, max {t.max():.1f} ms, missed ticks {missed}"
        )
        results.append((spec, t, missed))
    for spec, t, missed in results:
        print(
            f"RESULT policy={spec} threads={args.threads} decisions={len(t)} p50_ms={np.median(t):.2f} "
            f"p95_ms={np.percentile(t, 95):.2f} max_ms={t.max():.2f} missed_ticks={missed}"
        )


if __name__ == "__main__":
    main()
