"""`worlddrive eval`: closed-loop episodes of several drivers on the same (family, seed) list, scored against the
expert, with per-episode records, a summary, rollout GIFs of the worst episodes and the HTML report.

The expert always drives first: its progress is every other driver's EP reference and its Drive Score the bar. An
evaluation folder is resumable: episodes already in its episodes.jsonl (same driver, family, seed) are not rerun.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worlddrive.eval.closed_loop import EpisodeJob, EpisodeResult, family_table, run_episodes
from worlddrive.eval.drivers import (
    BASELINES,
    REPLAN_EVERY,
    check_replan_every,
    driver_name,
    ensemble_members,
    load_policy,
    on_onnx_runtime,
)
from worlddrive.eval.rollout import RolloutJob, render_rollout
from worlddrive.fileio import write_json_atomic
from worlddrive.parallel import run_jobs
from worlddrive.sim.scenarios import HELDOUT_FAMILIES

RECORDS, SUMMARY = "episodes.jsonl", "summary.json"


@dataclass
class EvalConfig:
    policies: list[str]  # make_driver specs; the expert is added first if missing
    families: list[str]
    seeds: list[int]
    workers: int = 1
    ray_address: str | None = None
    gallery: int = 3  # GIFs of each driver's worst episodes (0: none)
    data: str | None = None  # a dataset whose val split gives the learned policies' open-loop metrics
    open_loop_samples: int = 512
    replan_every: int = REPLAN_EVERY  # a learned policy's network runs every this many 10 Hz steps (see PolicyDriver)

    def __post_init__(self) -> None:
        check_replan_every(self.replan_every)


def evaluate(
    cfg: EvalConfig, out: Path, progress: Callable[[str, int], Callable[[], None]] | None = None
) -> dict[str, Any]:
    """Run (or resume) the evaluation into `out`; returns the summary also written to out/summary.json.

    `progress(description, total)` returns a callback called once per finished episode (the CLI's progress bar).
    """
    specs = ["expert", *[p for p in dict.fromkeys(cfg.policies) if p != "expert"]]
    names = {spec: driver_name(spec) for spec in specs}
    if len(set(names.values())) < len(names):
        raise ValueError(f"two policies would share a name in the tables: {names}")
    threads = 1 if cfg.workers > 1 or cfg.ray_address else 0  # one torch thread per worker process
    out.mkdir(parents=True, exist_ok=True)
    done = _load_records(out / RECORDS, cfg.replan_every)
    # rewritten without a torn last line (killed mid-write), so that this run's records start on a line of their own
    (out / RECORDS).write_text("".join(_record_line(k[0], cfg.replan_every, r) for k, r in done.items()))
    results: dict[str, list[EpisodeResult]] = {}
    with open(out / RECORDS, "a") as fh:
        for spec in specs:
            expert = {(r.family, r.seed): r.progress_m for r in results.get("expert", []) if r.score is not None}
            jobs = [
                EpisodeJob(spec, f, s, None if spec == "expert" else expert.get((f, s)), threads, cfg.replan_every)
                for f in cfg.families
                for s in cfg.seeds
            ]
            have = [done[(spec, j.family, j.seed)] for j in jobs if (spec, j.family, j.seed) in done]
            todo = [j for j in jobs if (spec, j.family, j.seed) not in done]
            tick = progress(f"{names[spec]} × {len(cfg.families)} families", len(todo)) if progress else None
            fresh: list[EpisodeResult] = []

            def finished(r: EpisodeResult, spec: str = spec, fresh: list = fresh, tick=tick) -> None:
                r.driver = names[spec]
                fresh.append(r)
                fh.write(_record_line(spec, cfg.replan_every, r))
                fh.flush()
                if tick:
                    tick()

            run_episodes(todo, finished, cfg.workers, cfg.ray_address)
            order = {(f, s): i for i, (f, s) in enumerate((j.family, j.seed) for j in jobs)}
            results[spec] = sorted(have + fresh, key=lambda r: order[(r.family, r.seed)])
    summary = {
        "seeds": [cfg.seeds[0], cfg.seeds[-1]],
        "families": cfg.families,
        "heldout_family": next((f for f in cfg.families if f in HELDOUT_FAMILIES), None),
        "replan_every": cfg.replan_every,
        "policies": {names[s]: policy_summary(results[s], results["expert"]) for s in specs},
    }
    if cfg.data:
        _open_loop(cfg, specs, names, summary)
    if cfg.gallery:
        summary["gallery"] = _gallery(cfg, specs, names, results, out, threads)
    write_json_atomic(out / SUMMARY, summary)
    return summary


def policy_summary(results: list[EpisodeResult], expert: list[EpisodeResult]) -> dict[str, Any]:
    """Drive Score on the training layouts' families (held-out seeds), on the held-out layout, and vs the expert."""

    def mean_ds(rs: list[EpisodeResult]) -> float | None:
        return float(np.mean([r.score.ds if r.score else 0.0 for r in rs])) if rs else None

    seen = [r for r in results if r.family not in HELDOUT_FAMILIES]
    held = [r for r in results if r.family in HELDOUT_FAMILIES]
    expert_seen = mean_ds([r for r in expert if r.family not in HELDOUT_FAMILIES])
    expert_held = mean_ds([r for r in expert if r.family in HELDOUT_FAMILIES])
    ds, held_ds = mean_ds(seen), mean_ds(held)
    rows = family_table(results)
    return {
        "ds": ds,
        "ds_ratio": None if results is expert or not expert_seen or ds is None else ds / expert_seen,
        "heldout_layout_ds": held_ds,
        "heldout_ds_ratio": None if results is expert or not expert_held or held_ds is None else held_ds / expert_held,
        "collisions": sum(r["collisions_at_fault"] for r in rows) / max(len(results), 1) * 100,
        "route_completion": float(np.mean([r["route_completion"] for r in rows])) if rows else 0.0,
        "episodes": len(results),
        "errors": sum(r["errors"] for r in rows),
        "families": rows,
    }


def episode_ds(out: Path, replan_every: int) -> dict[str, dict[tuple[str, int], float]]:
    """Each driver's Drive Score per (family, seed) from an evaluation folder's records (0 for a failed episode),
    keyed by the tables' driver name: what paired comparisons between policies need."""
    scores: dict[str, dict[tuple[str, int], float]] = {}
    for (spec, family, seed), r in _load_records(out / RECORDS, replan_every).items():
        scores.setdefault(driver_name(spec), {})[(family, seed)] = r.score.ds if r.score else 0.0
    return scores


def _load_records(path: Path, replan_every: int) -> dict[tuple[str, str, int], EpisodeResult]:
    """Episodes of an interrupted run; a torn last line (killed mid-write) is dropped and rerun. A folder
    evaluated with another replanning interval is refused: its episodes would be mixed into this one's means."""
    if not path.exists():
        return {}
    done = {}
    for line in path.read_text().splitlines():
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        theirs = d.get("replan_every", 1)  # records from before the setting existed replanned every step
        if theirs != replan_every:
            raise ValueError(
                f"{path} holds episodes driven with --replan-every {theirs}, not {replan_every}: "
                "evaluate into another --out folder"
            )
        r = EpisodeResult.from_dict(d)
        done[(d["spec"], r.family, r.seed)] = r
    return done


def _record_line(spec: str, replan_every: int, r: EpisodeResult) -> str:
    """One line of episodes.jsonl: the driver spec and replanning interval, then the episode's result."""
    return json.dumps({"spec": spec, "replan_every": replan_every, **r.as_dict()}) + "\n"


def _open_loop(cfg: EvalConfig, specs: list[str], names: dict[str, str], summary: dict) -> None:
    from worlddrive.data.dataset import WorldDriveDataset
    from worlddrive.eval.open_loop import open_loop_metrics

    val = WorldDriveDataset(cfg.data, "val")
    if not len(val):
        print(f"no open-loop metrics: {cfg.data} has no val episodes", flush=True)
        return
    for spec in specs:  # per checkpoint: an ensemble's open-loop metrics are its members'
        if spec in BASELINES or len(ensemble_members(spec)) > 1:
            continue
        if on_onnx_runtime(spec):  # they would measure the checkpoint's eager weights, not its graph
            print(f"no open-loop metrics for {spec}: it drives on ONNX Runtime", flush=True)
            continue
        policy = load_policy(spec)
        summary["policies"][names[spec]]["open_loop"] = open_loop_metrics(policy, val, cfg.open_loop_samples)


def _gallery(
    cfg: EvalConfig,
    specs: list[str],
    names: dict[str, str],
    results: dict[str, list[EpisodeResult]],
    out: Path,
    threads: int,
) -> list[dict]:
    """GIFs of each driver's worst episodes (lowest Drive Score, failures first), rerun with drawing on."""
    expert = {(r.family, r.seed): r.progress_m for r in results["expert"] if r.score is not None}
    jobs, entries = [], []
    for spec in specs:
        worst = sorted(results[spec], key=lambda r: (r.score is not None, r.score.ds if r.score else 0.0))
        for r in worst[: cfg.gallery]:
            gif = f"gifs/{names[spec]}_{r.family}_{r.seed}.gif"
            progress_m = expert.get((r.family, r.seed))
            jobs.append(RolloutJob(spec, r.family, r.seed, str(out / gif), 2, progress_m, threads, cfg.replan_every))
            entries.append(
                {
                    "policy": names[spec],
                    "family": r.family,
                    "seed": r.seed,
                    "ds": r.score.ds if r.score else 0.0,
                    "gif": gif,
                    "infractions": r.infractions,
                    "reasoning": None,
                    "error": r.error,
                }
            )
    (out / "gifs").mkdir(exist_ok=True)
    run_jobs(render_rollout, jobs, lambda _: None, cfg.workers, cfg.ray_address)
    return sorted((e for e in entries if (out / e["gif"]).exists()), key=lambda e: e["ds"])
