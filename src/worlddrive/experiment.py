"""`worlddrive experiment ablation`: does the world model pay? Train every (variant, data fraction, seed), evaluate
all runs in one closed-loop evaluation (the expert drives each (family, seed) once), and tabulate.

Every step is resumable (training continues from its last checkpoint, the evaluation skips recorded episodes), so a
killed experiment rerun with the same command picks up where it stopped.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worlddrive.eval.compare import paired_difference, per_seed_text
from worlddrive.eval.drivers import REPLAN_EVERY, check_replan_every, driver_name
from worlddrive.eval.evaluate import EvalConfig, episode_ds, evaluate
from worlddrive.eval.report import write_report
from worlddrive.fileio import write_json_atomic, write_text_atomic
from worlddrive.sim.scenarios import HELDOUT_FAMILIES

VARIANTS: dict[str, str] = {  # name: train's --wm
    "action_only": "",
    "vq": "vq",
    "frame": "frame",
    "bev": "bev",
    "all": "vq,frame,bev",
    "frame_bev": "frame,bev",  # every recipe of results/README.md since session 13
}
DEFAULT_VARIANTS = ("action_only", "vq", "frame", "bev", "all")  # the table's rows: each head alone, then all
PER_RUN_FLAGS = ("--config", "--out", "--init", "--wm", "--vq", "--seed", "--data-fraction")  # the ablation's to set
STAGE_FLAGS = ("--data", "--max-steps", "--batch-size")  # set by the ablation for the first stage, by --finetune-flags


@dataclass
class AblationConfig:
    data: str
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    config: str = "small"
    max_steps: int = 600
    batch_size: int = 16
    families: list[str] = field(default_factory=list)
    eval_seeds: list[int] = field(default_factory=list)
    workers: int = 1
    vq_steps: int = 400
    replan_every: int = REPLAN_EVERY  # closed loop: a policy's network runs every this many 10 Hz steps
    # more `worlddrive train` flags for every run (e.g. the map inputs), so that a recipe other than the defaults is
    # ablated; with finetune_flags, each run is then fine-tuned (`train --init RUN` with the same flags, then these,
    # e.g. the lateral head) and the fine-tuned one is evaluated, at `pace` when given (RUN@PACE)
    train_flags: str = ""
    finetune_flags: str = ""
    pace: str = ""

    def __post_init__(self) -> None:
        _check_flags("train_flags", self.train_flags, PER_RUN_FLAGS + STAGE_FLAGS)
        _check_flags("finetune_flags", self.finetune_flags, PER_RUN_FLAGS)
        if self.pace:
            from worlddrive.models.config import PACES  # imports torch

            if self.pace not in PACES:
                raise ValueError(f"pace {self.pace!r}: one of {', '.join(PACES)} (or none)")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise KeyError(f"unknown ablation variant {unknown}; known: {', '.join(VARIANTS)}")
        check_replan_every(self.replan_every)
        bad = [f for f in self.fractions if not 0 < f <= 1]
        if bad:
            raise ValueError(f"data fractions must lie in (0, 1], got {bad}")
        if not (self.variants and self.fractions and self.seeds and self.families and self.eval_seeds):
            raise ValueError("an ablation needs at least one variant, fraction, seed, family and evaluation seed")
        if self.eval_seeds != list(range(self.eval_seeds[0], self.eval_seeds[-1] + 1)):
            raise ValueError(f"evaluation seeds must be a contiguous range A-B, got {self.eval_seeds}")


def _check_flags(name: str, flags: str, refused: tuple[str, ...]) -> None:
    given = [t.split("=")[0] for t in shlex.split(flags) if t.startswith("--")]
    taken = [f for f in given if f in refused]
    if taken:
        raise ValueError(f"{name} may not set {', '.join(taken)}: the ablation sets {', '.join(refused)} itself")


def run_name(variant: str, fraction: float, seed: int) -> str:
    return f"{variant}_f{fraction:g}_s{seed}"


def command(cfg: AblationConfig, out: Path) -> str:
    """The command line that reruns (or resumes) this experiment, every setting spelled out."""
    argv = ["experiment", "ablation", "--data", cfg.data, "--out", str(out), "--config", cfg.config]
    argv += ["--variants", ",".join(cfg.variants), "--fractions", ",".join(f"{f:g}" for f in cfg.fractions)]
    argv += ["--seeds", ",".join(map(str, cfg.seeds)), "--max-steps", str(cfg.max_steps)]
    argv += ["--batch-size", str(cfg.batch_size), "--vq-steps", str(cfg.vq_steps), "--families", ",".join(cfg.families)]
    argv += ["--eval-seeds", f"{cfg.eval_seeds[0]}-{cfg.eval_seeds[-1]}", "--workers", str(cfg.workers)]
    for flag, value in (("--train-flags", cfg.train_flags), ("--finetune-flags", cfg.finetune_flags)):
        argv += [flag, value] if value else []
    argv += ["--pace", cfg.pace] if cfg.pace else []
    return "worlddrive " + shlex.join([*argv, "--replan-every", str(cfg.replan_every)])


def ablation(cfg: AblationConfig, out: Path, cli: Callable[[list[str]], int], progress=None) -> dict[str, Any]:
    """Train, evaluate and tabulate into `out` (runs/, eval/, ablation.json, ablation.md, ablation.png).

    `cli` runs a `worlddrive` command line (the experiment is made of the same commands a user would type).
    """
    from worlddrive.data.dataset import WorldDriveDataset, data_roots

    first = data_roots(cfg.data)[0][0]  # the ADE and the VQ tokenizer use the first of train's --data folders
    if not len(WorldDriveDataset(first, "val")):  # checked before hours of training, not after
        raise ValueError(f"dataset {first} has no val episodes: the ablation's ADE needs some (generate more)")
    runs = out / "runs"
    if any("vq" in VARIANTS[v] for v in cfg.variants) and not (out / "vq" / "config.json").exists():
        _run(cli, ["train-tokenizer", "--data", first, "--out", str(out / "vq"), "--steps", str(cfg.vq_steps)])
    specs = {}
    # seed outermost: a run stopped part-way has every variant and fraction of its first seed(s) trained
    for seed in cfg.seeds:
        for fraction in cfg.fractions:
            for variant in cfg.variants:
                name = run_name(variant, fraction, seed)
                argv = ["train", "--config", cfg.config, "--data", cfg.data, "--out", str(runs / name)]
                argv += ["--wm", VARIANTS[variant], "--data-fraction", str(fraction), "--seed", str(seed)]
                argv += ["--max-steps", str(cfg.max_steps), "--batch-size", str(cfg.batch_size)]
                if "vq" in VARIANTS[variant]:
                    argv += ["--vq", str(out / "vq")]
                argv += shlex.split(cfg.train_flags)
                _train(cli, argv)
                run = runs / name
                if cfg.finetune_flags:  # the same flags (a later one wins) with another --out and --init, then its own
                    run = runs / f"{name}_ft"
                    finetune = ["--out", str(run), "--init", str(runs / name), *shlex.split(cfg.finetune_flags)]
                    _train(cli, argv + finetune)
                specs[str(run) + (f"@{cfg.pace}" if cfg.pace else "")] = (variant, fraction, seed)
    eval_cfg = EvalConfig(
        list(specs),
        cfg.families,
        cfg.eval_seeds,
        cfg.workers,
        gallery=1,
        data=first,
        replan_every=cfg.replan_every,
    )
    summary = evaluate(eval_cfg, out / "eval", progress)
    rows = []
    by_variant = sorted(specs.items(), key=lambda kv: (cfg.variants.index(kv[1][0]), kv[1][1], kv[1][2]))
    for spec, (variant, fraction, seed) in by_variant:
        run = driver_name(spec)  # the name the evaluation's tables and records use
        pol = summary["policies"][run]
        rows.append(
            {
                "run": run,
                "variant": variant,
                "fraction": fraction,
                "seed": seed,
                "ds": pol["ds"],
                "heldout_ds": pol["heldout_layout_ds"],
                "ade": pol.get("open_loop", {}).get("ade"),
                "collisions": pol["collisions"],
            }
        )
    scores = episode_ds(out / "eval", cfg.replan_every)
    seen = {r["run"]: {k: v for k, v in scores[r["run"]].items() if k[0] not in HELDOUT_FAMILIES} for r in rows}
    result = {"command": command(cfg, out), "config": asdict(cfg), "expert_ds": summary["policies"]["expert"]["ds"]}
    result["rows"] = rows
    result["gains"] = paired_gains(rows, seen)
    write_json_atomic(out / "ablation.json", result)
    write_text_atomic(out / "ablation.md", table_markdown(result))
    plot_scaling(result, out / "ablation.png")
    write_report(out / "eval", ablation=out / "ablation.json")
    return result


def _train(cli: Callable[[list[str]], int], argv: list[str]) -> None:
    print(f"\n$ worlddrive {shlex.join(argv)}", flush=True)  # copy-pasteable, empty --wm included
    _run(cli, argv)


def _run(cli: Callable[[list[str]], int], argv: list[str]) -> None:
    code = cli(argv)
    if code:
        raise RuntimeError(f"`worlddrive {' '.join(argv)}` failed with exit code {code}")


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and spread (min-max over seeds) per (variant, fraction), in the order first seen."""
    out = []
    for key in dict.fromkeys((r["variant"], r["fraction"]) for r in rows):
        group = [r for r in rows if (r["variant"], r["fraction"]) == key]
        agg = {"variant": key[0], "fraction": key[1], "seeds": len(group)}
        for metric in ("ds", "heldout_ds", "ade", "collisions"):
            values = [r[metric] for r in group if r[metric] is not None]
            agg[metric] = float(np.mean(values)) if values else None
            agg[f"{metric}_spread"] = float(np.ptp(values)) / 2 if values else None
        out.append(agg)
    return out


def paired_gains(rows: list[dict], episodes: dict[str, dict[tuple[str, int], float]], boot: int = 2000) -> list[dict]:
    """What each world-model variant adds to action-only on the very same episodes: its DS minus action-only's at the
    same data fraction, and at 100 % (does less data with a world model match all of it without?), per episode and
    training seed, averaged over both (`compare.paired_difference`). `episodes[run name]` maps (family, seed) to DS."""
    runs = {(r["variant"], r["fraction"], r["seed"]): r["run"] for r in rows}
    gains = []
    for variant, fraction in dict.fromkeys((v, f) for v, f, _ in runs if v != "action_only"):
        for against in dict.fromkeys((fraction, 1.0)):
            seeds = [s for v, f, s in runs if (v, f) == (variant, fraction) and ("action_only", against, s) in runs]
            if not seeds:
                continue
            pairs = [(episodes[runs[variant, fraction, s]], episodes[runs["action_only", against, s]]) for s in seeds]
            gain = paired_difference(pairs, boot)
            if gain is not None:
                gains.append({"variant": variant, "fraction": fraction, "against": against, **gain})
    return gains


def table_markdown(result: dict) -> str:
    """The ablation table: mean ± half the min-max spread over training seeds."""

    def cell(a: dict, metric: str, digits: int) -> str:
        if a[metric] is None:
            return "–"
        return f"{a[metric]:.{digits}f} ± {a[metric + '_spread']:.{digits}f}"

    lines = [f"Made by `{result['command']}`", ""] if result.get("command") else []
    lines += [
        f"Expert Drive Score on the same episodes: {result['expert_ds']:.3f}",
        "",
        "| variant | data | seeds | DS (held-out seeds) | DS (held-out layout) | ADE (m) | collisions / 100 eps |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in aggregate(result["rows"]):
        lines.append(
            f"| {a['variant']} | {a['fraction']:.0%} | {a['seeds']} | {cell(a, 'ds', 3)} | "
            f"{cell(a, 'heldout_ds', 3)} | {cell(a, 'ade', 2)} | {cell(a, 'collisions', 1)} |"
        )
    if result.get("gains"):
        lines += [
            "",
            "DS gain over action-only, paired on the same held-out episodes (training-layout families) and training",
            "seeds; interval: 95 % bootstrap over episodes (not over training seeds).",
            "",
            "| variant | data | vs action-only at | DS gain | 95 % interval | per training seed | episodes |",
            "|---|---|---|---|---|---|---|",
        ]
        for g in result["gains"]:
            lines.append(
                f"| {g['variant']} | {g['fraction']:.0%} | {g['against']:.0%} | {g['gain']:+.3f} | "
                f"[{g['low']:+.3f}, {g['high']:+.3f}] | {per_seed_text(g)} | {g['episodes']} |"
            )
    return "\n".join(lines) + "\n"


def plot_scaling(result: dict, path: Path) -> Path:
    """DS vs data fraction, one line per variant, error bars = min-max over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    agg = aggregate(result["rows"])
    for variant in dict.fromkeys(a["variant"] for a in agg):
        pts = sorted((a["fraction"], a["ds"], a["ds_spread"]) for a in agg if a["variant"] == variant)
        x, y, e = zip(*pts, strict=True)
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=variant)
    ax.axhline(result["expert_ds"], color="k", ls="--", lw=1, label="expert")
    ax.set_xlabel("fraction of training data")
    ax.set_ylabel("Drive Score (held-out seeds)")
    ax.set_ylim(0, 1.02)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".partial.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
