"""`worlddrive` command line: the one place that wires sim, data and eval together.

Every command that measures prints one machine-readable line last: `RESULT key=value ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Before torch loads libgomp: idle OpenMP threads sleep instead of spinning. On 2 cores shared with simulator workers or
# another job, spinning threads wait on descheduled peers and a training step ran ~5x slower; quiet, this costs 4-9 %
# (measured with `worlddrive bench train`, results/README.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# open-loop metrics printed on RESULT lines (all of them go to summary.json and the training log)
OPEN_LOOP_RESULT = ("ade", "fde", "plan_collision_rate", "frame_psnr", "frame_ssim", "vq_psnr", "bev_iou_true_plan")
OPEN_LOOP_RESULT += ("light_acc_1s", "light_acc_2s", "fact_light_acc", "fact_ped_acc", "fact_meta_acc", "fact_acc")
OPEN_LOOP_RESULT += ("red_overrun", "red_samples")
TRAIN_RESULT = "result.json"  # a finished `worlddrive train` run's RESULT line, in its --out folder
DEMO_FAMILIES = (
    "straight,intersection_signal,intersection_stop,crosswalk,urban_mixed,occluded_pedestrian,yellow_light,cut_in"
)


def _csv(text: str) -> list[str]:
    """A comma-separated option's items, blanks dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _families(text: str) -> list[str]:
    from worlddrive.sim.scenarios import FAMILIES

    names = _csv(text)
    if not names:
        raise SystemExit("error: --families is empty")
    unknown = [f for f in names if f not in FAMILIES]
    if unknown:
        raise SystemExit(f"error: unknown family {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    return names


def _pair(option: str, text: str, cast: type, example: str, sep: str = "-") -> tuple:
    """An `A-B` option value (`AxB` with sep="x") as (A, B)."""
    try:
        a, b = (cast(x) for x in text.lower().split(sep))
    except ValueError:
        raise SystemExit(f"error: {option} must look like A{sep}B (e.g. {example}), got {text!r}") from None
    return a, b


def _seed_range(text: str) -> list[int]:
    a, b = _pair("--seeds", text, int, "1000000-1000099")
    if b < a or a < 0:
        raise SystemExit(f"error: --seeds range {text!r} is empty or negative")
    return list(range(a, b + 1))


def _json_object(option: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {option} is not JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"error: {option} must be a JSON object like '{{\"ego_speed\": [2, 16]}}', got {text!r}")
    return value


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_probe.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"error: output folder {path} is not writable: {e}") from None
    return path


def _result(**kv) -> None:
    print("RESULT " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in kv.items()))


# ---------------------------------------------------------------------- commands


def cmd_generate(a: argparse.Namespace) -> int:
    from worlddrive.data.generate import generate
    from worlddrive.data.record import TAKEOVER_LENGTH_S

    if a.episodes <= 0:
        raise SystemExit(f"error: --episodes must be positive, got {a.episodes}")
    families = _families(a.families)
    t0 = time.time()
    info = generate(
        families,
        a.episodes,
        a.seed,
        Path(a.out),
        workers=a.workers,
        ray_address=a.ray_address,
        episodes_per_shard=a.episodes_per_shard,
        perturb=a.perturb,
        takeover=a.takeover,
        takeover_seconds=_pair("--takeover-seconds", a.takeover_seconds, float, "3-8")
        if a.takeover_seconds
        else TAKEOVER_LENGTH_S,
        family_config=_json_object("--family-config", a.family_config) if a.family_config else None,
    )
    dt = time.time() - t0
    counts = info["counts"]
    _result(
        episodes=counts["episodes"],
        samples=counts["samples"],
        seconds=dt,
        samples_per_s=counts["samples"] / max(dt, 1e-9),
    )
    return 0


def cmd_dataset(a: argparse.Namespace) -> int:
    if a.action == "validate":
        from worlddrive.data.format import validate

        problems = validate(Path(a.path))
        for p in problems:
            print(f"problem: {p}", file=sys.stderr)
        print(f"{a.path}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        _result(ok=int(not problems), problems=len(problems))
        return 1 if problems else 0
    from worlddrive.data.show import show

    print(show(Path(a.path), Path(a.out), n=a.n))
    print(f"contact sheet: {a.out}")
    return 0


def cmd_drive(a: argparse.Namespace) -> int:
    from worlddrive.eval.drivers import make_driver
    from worlddrive.eval.rollout import RolloutJob, render_rollout

    _families(a.family)
    make_driver(a.policy, replan_every=a.replan_every)  # a bad checkpoint or setting is named before driving
    res = render_rollout(RolloutJob(a.policy, a.family, a.seed, a.out, a.every, replan_every=a.replan_every))
    if res.error:
        print(res.error, file=sys.stderr)
        return 1
    s = res.score
    print(f"wrote {a.out}")
    print(
        f"Drive Score {s.ds:.3f}  NC {s.nc:.2f} DAC {s.dac:.2f} TLC {s.tlc:.2f} YC {s.yc:.2f} TTC {s.ttc:.2f} "
        f"EP {s.ep:.2f} C {s.c:.2f} SL {s.sl:.2f}  progress {res.progress_m:.0f} m (EP against its own progress)"
    )
    _result(ds=s.ds, progress_m=res.progress_m, collisions=s.collisions_at_fault)
    return 0


def cmd_probe(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from worlddrive.eval.probe import HORIZONS_S, probe_episode

    _families(a.family)
    probe = probe_episode(a.policy, a.family, a.seed, a.every, a.replan_every)
    if probe.result.error:
        print(probe.result.error, file=sys.stderr)
        return 1
    horizons = "/".join(f"{h:g}" for h in HORIZONS_S)
    t = Table(title=f"{a.policy} on {a.family} seed {a.seed}: its plan beside the expert's from the same state")
    for col in (
        "t s",
        "v m/s",
        "control",
        "stop m",
        "off m",
        f"plan m @{horizons} s",
        "expert m",
        "y4 plan/exp.",
        "a / exp.",
    ):
        t.add_column(col, justify="right")
    for r in probe.rows:
        t.add_row(
            f"{r.t:.1f}",
            f"{r.speed:.2f}",
            r.control,
            f"{r.stop_m:.1f}",
            f"{r.off_route_m:.1f}",
            " ".join(f"{d:5.1f}" for d in r.plan_m),
            " ".join(f"{d:5.1f}" for d in r.expert_m),
            f"{r.plan_y4:+.1f} / {r.expert_y4:+.1f}",
            f"{r.accel:+.2f} / {r.expert_accel:+.2f}",
        )
    Console(width=160).print(t)
    if a.out:
        probe.write_csv(Path(a.out))
        print(f"wrote {a.out}")
    _result(policy=a.policy, family=a.family, seed=a.seed, ds=probe.result.score.ds, **probe.summary())
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from worlddrive.eval.compare import compare, per_seed_text

    base, new = _csv(a.base), _csv(a.new)
    result = compare(base, new)
    table = Table(title="DS of --new minus --base per family, paired on the same episodes")
    for col in ("family", "DS gain", "95 % interval", "per training seed", "episodes"):
        table.add_column(col, justify="left" if col == "family" else "right")
    for family, g in result["families"].items():
        interval = f"[{g['low']:+.3f}, {g['high']:+.3f}]"
        table.add_row(family, f"{g['gain']:+.3f}", interval, per_seed_text(g), str(g["episodes"]))
    Console(width=160).print(table)
    for part, label in (("training_layouts", "training-layout families"), ("heldout_layout", "held-out layout")):
        g = result[part]
        if g is None:
            print(f"{label}: no episode evaluated under both")
            continue
        print(
            f"{label}: DS {g['gain']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}] (95 % bootstrap over "
            f"{g['episodes']} episodes); per training seed {per_seed_text(g)}"
        )
    train, held = result["training_layouts"] or {}, result["heldout_layout"] or {}
    _result(
        gain=train.get("gain"),
        low=train.get("low"),
        high=train.get("high"),
        episodes=train.get("episodes", 0),
        layout_gain=held.get("gain"),
        layout_low=held.get("low"),
        layout_high=held.get("high"),
        layout_episodes=held.get("episodes", 0),
        pairs=len(base),
    )
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from worlddrive.eval.drivers import ENSEMBLE_SEP, policy_dir, split_pace, split_planner
    from worlddrive.models.onnx_runtime import export_onnx

    if ENSEMBLE_SEP in a.policy:
        raise SystemExit(f"error: export one checkpoint at a time, got the ensemble {a.policy!r}")
    checkpoint, planner = split_planner(a.policy)
    if planner == "imagine":
        raise SystemExit(f"error: @imagine plans with the eager world model; export {checkpoint!r}")
    record = export_onnx(policy_dir(a.policy), a.out, int8=a.int8, pace=split_pace(a.policy)[1])
    print(f"wrote {a.out}: drive it as --policy {a.out}")
    _result(policy=a.policy, out=a.out, **record)
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from rich.console import Console

    from worlddrive.eval.closed_loop import eval_seeds
    from worlddrive.eval.drivers import make_driver
    from worlddrive.eval.evaluate import EvalConfig, evaluate
    from worlddrive.eval.report import write_report

    if a.episodes <= 0 and not a.seeds:
        raise SystemExit(f"error: --episodes must be positive, got {a.episodes}")
    policies = _csv(a.policy)
    if not policies:
        raise SystemExit("error: --policy is empty")
    seeds = _seed_range(a.seeds) if a.seeds else eval_seeds(a.episodes)
    families = _families(a.families)
    for spec in policies:
        make_driver(spec)  # fail fast, in this process, on a missing or mismatched checkpoint
    out = _writable_dir(Path(a.out))
    cfg = EvalConfig(
        policies, families, seeds, a.workers, a.ray_address, a.gallery, a.data, replan_every=a.replan_every
    )
    with _progress() as progress:
        summary = evaluate(cfg, out, progress)
    console = Console(width=160)
    for name, pol in summary["policies"].items():
        _print_table(console, pol["families"], f"{name}: Drive Score, seeds {seeds[0]}–{seeds[-1]}")
    _print_summary(console, summary)
    report = write_report(out)
    print(f"report: {report}")
    expert = summary["policies"]["expert"]
    names = [n for n in summary["policies"] if n != "expert"] or ["expert"]
    for name in names[1:] + names[:1]:  # a RESULT line per policy; the first of --policy last, as tools read the last
        pol = summary["policies"][name]
        ol = pol.get("open_loop", {})
        _result(
            policy=name,
            ds=pol["ds"],
            expert_ds=expert["ds"],
            ds_ratio=pol["ds_ratio"] if pol["ds_ratio"] is not None else 1.0,
            heldout_layout_ds=pol["heldout_layout_ds"] if pol["heldout_layout_ds"] is not None else float("nan"),
            collisions=pol["collisions"],
            episodes=pol["episodes"],
            errors=pol["errors"],
            replan_every=a.replan_every,
            **{k: float(ol[k]) for k in OPEN_LOOP_RESULT if k in ol},
        )
    return 0


@contextmanager
def _progress() -> Iterator[Callable[[str, int], Callable[[], None]]]:
    """Rich bars for `evaluate`/`ablation`: progress(description, total) adds a bar and returns its advance()."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn()) as bar:

        def progress(description: str, total: int) -> Callable[[], None]:
            task = bar.add_task(description, total=total)
            return lambda: bar.advance(task)

        yield progress


def _print_summary(console, summary: dict) -> None:
    from rich.table import Table

    t = Table(title=f"closed loop, seeds {summary['seeds'][0]}–{summary['seeds'][1]}")
    for col in ("policy", "DS", "DS / expert", "held-out layout DS", "coll./100 eps", "completion", "errors", "ADE"):
        t.add_column(col, justify="right")
    for name, p in summary["policies"].items():
        t.add_row(
            name,
            _fmt(p["ds"]),
            _fmt(p["ds_ratio"]),
            _fmt(p["heldout_layout_ds"]),
            f"{p['collisions']:.1f}",
            f"{p['route_completion']:.2f}",
            str(p["errors"]),
            _fmt(p.get("open_loop", {}).get("ade")),
        )
    console.print(t)


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _print_table(console, rows: list[dict], title: str) -> None:
    from rich.table import Table

    t = Table(title=title)
    for col in ("family", "n", "DS", "NC", "DAC", "TLC", "YC", "TTC", "EP", "C", "SL", "coll/km", "red/km", "compl."):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            r["family"],
            str(r["episodes"]),
            *(f"{r[k]:.3f}" for k in ("ds", "nc", "dac", "tlc", "yc", "ttc", "ep", "c", "sl")),
            f"{r['collisions_at_fault_per_km']:.2f}",
            f"{r['red_lights_per_km']:.2f}",
            f"{r['route_completion']:.2f}",
        )
    console.print(t)


def cmd_train(a: argparse.Namespace) -> int:
    """Train a policy on a dataset; resumable: the same command after a kill continues from the last save, and on a
    finished run (its result.json reaches --max-steps) prints the recorded result without loading data or model."""
    import torch

    from worlddrive.data.dataset import WorldDriveDataset, data_roots
    from worlddrive.data.format import load_stats
    from worlddrive.fileio import write_json_atomic
    from worlddrive.models import PolicyConfig, WorldDrivePolicy
    from worlddrive.models.text import corpus, train_tokenizer
    from worlddrive.train import TrainConfig, train

    if not 0 < a.data_fraction <= 1:
        raise SystemExit(f"error: --data-fraction must be in (0, 1], got {a.data_fraction}")
    out = _writable_dir(Path(a.out))
    if (out / TRAIN_RESULT).exists():
        recorded = json.loads((out / TRAIN_RESULT).read_text())
        if recorded["steps"] >= a.max_steps:
            print(f"{out} is already trained ({recorded['steps']} steps); its recorded result:")
            _result(**recorded)
            return 0
    if a.train_only and not (a.init or (out / "policy").exists()):
        raise SystemExit(f"error: --train-only {a.train_only} trains a head over a trained policy: give --init CKPT")
    fields = WorldDriveDataset.fields_for(a.wm.split(","))  # action-only skips future frames and BEV rasters
    roots = data_roots(a.data)
    # a head of its own alone reads no future frames or BEV (the val split keeps them for the open-loop metrics)
    train_fields = WorldDriveDataset.fields_for(()) if a.train_only else fields
    train_ds = _union(roots, "train", train_fields, a.data_fraction, a.seed)
    val_ds = _union(roots, "val", fields, a.data_fraction, a.seed)
    rank = int(os.environ.get("RANK", "0"))  # set by torchrun
    heads = tuple(h for h in a.wm.split(",") if h)
    if "vq" in heads and not a.vq and not a.init:
        raise SystemExit("error: --wm vq needs --vq DIR, a tokenizer trained by `worlddrive train-tokenizer`")
    saved = out / "policy"
    if saved.exists():  # resume: the tokenizer, stats and config of the first run, weights from train_state
        policy = WorldDrivePolicy.from_pretrained(saved)
    else:
        overrides = {
            "action_expert": a.action_expert,
            "wm_heads": heads,
            "backbone": a.backbone,
            "instruction_encoder": a.instruction_encoder,
        }
        optional = (
            "lambda_wm",
            "occ_pos_weight",
            "ego_history",
            "regression_loss",
            "history_dropout",
            "lateral_head",
            "lateral_target",
            "light_head",
            "light_input",
            "speed_limit_input",
            "stop_line_input",
            "plan_residual",
            "speed_input",
            "patch_size",
        )
        if a.image_size is not None:
            overrides["image_size"] = _pair("--image-size", a.image_size, int, "128x256", sep="x")
        for name in optional:  # not given: the preset's
            if getattr(a, name) is not None:
                overrides[name] = getattr(a, name)
        config = PolicyConfig.preset(a.config, **overrides)
        head = a.train_only
        if head and not getattr(config, f"{head}_head"):
            raise SystemExit(f"error: --train-only {head} trains the {head} head: add --{head}-head")
        if a.init:
            policy = _fine_tuned(a.init, config, a.seed, a.train_only)
        else:
            tokenizer = train_tokenizer(corpus(Path(roots[0][0])), config.vocab_size)
            torch.manual_seed(a.seed)  # the initial weights, the world model's included, come from the seed too
            policy = WorldDrivePolicy(config, tokenizer, load_stats(Path(roots[0][0])), _world_model(a, config))
        policy.save_pretrained(saved)
    policy.train()
    torch.manual_seed(a.seed)
    cfg = TrainConfig(
        max_steps=a.max_steps,
        batch_size=a.batch_size,
        lr=a.lr,
        seed=a.seed,
        warmup_steps=min(50, a.max_steps // 10),
        eval_every=max(a.max_steps // 5, 1),
        save_every=max(min(50, a.max_steps // 4), 1),
        train_only=(a.train_only,) if a.train_only else (),
    )
    t0 = time.time()
    res = train(
        policy,
        train_ds,
        val_ds if len(val_ds) else None,
        policy.collate_fn(),
        out,
        cfg,
        on_save=lambda model, _: model.save_pretrained(saved),
    )
    if rank:
        return 0
    keys = {k: v for k, v in res.items() if k in ("loss", "action_loss", "val_loss", "val_action_loss")}
    print(f"trained {res['step']} steps in {time.time() - t0:.0f} s; policy in {saved}")
    metrics = {}
    if a.open_loop_samples and len(val_ds):
        from worlddrive.eval.open_loop import open_loop_metrics

        metrics = open_loop_metrics(policy, val_ds, a.open_loop_samples, reason_samples=min(64, a.open_loop_samples))
        print("open loop on the val split: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    result = {
        **{k: float(v) for k, v in keys.items()},
        "steps": int(res["step"]),
        "skipped": int(res["skipped"]),
        "samples_per_s": float(res["samples_per_s"]),
        **{k: float(metrics[k]) for k in OPEN_LOOP_RESULT if k in metrics},
    }
    write_json_atomic(out / TRAIN_RESULT, result)  # written last: its presence means the run is finished
    _result(**result)
    return 0


def _union(roots: list[tuple[str, int]], split: str, fields, fraction: float, seed: int):
    """The split of one dataset folder or the union of several (each (folder, times): the train split `times` over);
    `fraction` < 1 keeps a seeded choice of whole episodes of each (the same for every variant of an ablation)."""
    import numpy as np
    from torch.utils.data import ConcatDataset, Subset

    from worlddrive.data.dataset import WorldDriveDataset

    parts = []
    for root, times in roots:
        ds = WorldDriveDataset(root, split, fields=fields)
        if fraction < 1 and split == "train":
            keep = np.random.default_rng(seed).permutation(len(ds.episodes))
            keep = keep[: max(1, round(fraction * len(keep)))]
            ds = Subset(ds, np.nonzero(np.isin(ds.item_episode, keep))[0].tolist())
        parts += [ds] * (times if split == "train" else 1)
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def _fine_tuned(init: str, config, seed: int, train_only: str | None = None):
    """The checkpoint `init` (builtin or a RUN folder) to train on: weights, tokenizer and normalisation stats. Its
    architecture must be the one the flags describe, so that a run's flags always say what was trained, except for
    heads the flags switch on (`GROWN`): they start from weights drawn with `seed`, everything else is the checkpoint's;
    and for what a head that trains learns (`REFITTED`): it starts from the checkpoint's weights.
    """
    import torch

    from worlddrive.eval.drivers import policy_dir
    from worlddrive.models import WorldDrivePolicy
    from worlddrive.models.config import GROWN, REFITTED, TRAINING_ONLY
    from worlddrive.models.policy import BACKBONE_FILE

    policy = WorldDrivePolicy.from_pretrained(policy_dir(init))
    theirs, ours = policy.config.to_dict(), config.to_dict()
    grown = {k for k in GROWN if ours[k] and not theirs[k]}
    # the head learns the field's new meaning; a tensor whose shape it changes starts afresh
    refitted = {k for k, head in REFITTED.items() if train_only in (None, head) and theirs[k] != ours[k]}
    differ = {
        k: (theirs[k], ours[k]) for k in ours if theirs[k] != ours[k] and k not in TRAINING_ONLY | grown | refitted
    }
    if differ:
        raise SystemExit(
            f"error: --init {init} is not the model these flags describe (checkpoint vs flags: {differ}); "
            "give the flags it was trained with (see its config.json)"
        )
    new_config = dataclasses.replace(policy.config, **{k: getattr(config, k) for k in TRAINING_ONLY | grown | refitted})
    if not grown | refitted:
        policy.config = new_config
        return policy
    backbone_config = policy_dir(init) / BACKBONE_FILE if new_config.hf_source is not None else None
    torch.manual_seed(seed)
    bigger = WorldDrivePolicy(new_config, policy.tokenizer, policy.stats, policy.world_model, backbone_config)
    shapes = {k: v.shape for k, v in bigger.state_dict().items()}
    kept = {k: v for k, v in policy.state_dict().items() if shapes.get(k, v.shape) == v.shape}
    missing, unexpected = bigger.load_state_dict(kept, strict=False)
    assert not unexpected, unexpected  # the grown model holds every tensor of the smaller one
    changes = [f"{sorted(grown)} switched on"] * bool(grown) + [f"{sorted(refitted)} changed"] * bool(refitted)
    print(f"--init {init}: {', '.join(changes)}, {len(missing)} new tensors drawn with seed {seed}")
    return bigger


def _world_model(a: argparse.Namespace, config):
    """The world-model heads asked for by --wm, with the frozen VQ tokenizer the `vq` head needs; None if none."""
    heads = tuple(h for h in a.wm.split(",") if h)
    if not heads:
        return None
    from worlddrive.models.vq import VQTokenizer
    from worlddrive.models.world_model import WorldModel

    tokenizer = VQTokenizer.load(a.vq) if "vq" in heads else None
    return WorldModel(config.d_model, heads, tokenizer=tokenizer, occ_pos_weight=config.occ_pos_weight)


def cmd_train_tokenizer(a: argparse.Namespace) -> int:
    from worlddrive.models.vq import train_vq_tokenizer

    res = train_vq_tokenizer(a.data, _writable_dir(Path(a.out)), steps=a.steps, batch_size=a.batch_size, seed=a.seed)
    print(f"VQ tokenizer in {a.out}")
    _result(
        psnr=float(res["val_psnr"]),
        ssim=float(res["val_ssim"]),
        codebook_usage=float(res["val_codebook_usage"]),
        seconds=float(res["train_seconds"]),
    )
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    if a.what == "sim":
        from worlddrive.sim.bench import bench_sim

        res = bench_sim(seconds=a.seconds)
    else:
        from worlddrive.models.bench import bench_train

        heads = tuple(h for h in a.wm.split(",") if h)
        res = bench_train(a.config, a.batch_size, a.seconds, heads, a.bf16, a.data, a.threads)
        if a.data is None:
            print("model only: synthetic batches (example_batch, texts at full length), no data loading")
    for k, v in res.items():
        print(f"{k:32s} {v:12.6g}")
    _result(**res)
    return 0


def cmd_experiment(a: argparse.Namespace) -> int:
    from worlddrive.experiment import DEFAULT_VARIANTS, AblationConfig, ablation

    out = _writable_dir(Path(a.out))
    cfg = AblationConfig(
        data=a.data,
        variants=[v for v in a.variants.split(",") if v] if a.variants else list(DEFAULT_VARIANTS),
        fractions=[float(f) for f in a.fractions.split(",") if f],
        seeds=[int(s) for s in a.seeds.split(",") if s],
        config=a.config,
        max_steps=a.max_steps,
        batch_size=a.batch_size,
        families=_families(a.families),
        eval_seeds=_seed_range(a.eval_seeds) if a.eval_seeds else _default_eval_seeds(a.episodes),
        workers=a.workers,
        vq_steps=a.vq_steps,
        replan_every=a.replan_every,
        train_flags=a.train_flags,
        finetune_flags=a.finetune_flags,
        pace=a.pace,
    )
    with _progress() as progress:
        result = ablation(cfg, out, main, progress)
    print((out / "ablation.md").read_text())
    print(f"table: {out / 'ablation.md'}, plot: {out / 'ablation.png'}, report: {out / 'eval' / 'report.html'}")
    rows = result["rows"]
    _result(runs=len(rows), expert_ds=result["expert_ds"], best_ds=max(r["ds"] for r in rows))
    return 0


def _default_eval_seeds(episodes: int) -> list[int]:
    from worlddrive.eval.closed_loop import eval_seeds

    if episodes <= 0:
        raise SystemExit(f"error: --episodes must be positive, got {episodes}")
    return eval_seeds(episodes)


def cmd_demo(a: argparse.Namespace) -> int:
    """The main job: generate a dataset, train the VLA with and without the world model, evaluate both in closed
    loop against the expert and two lower bounds, and write the report."""
    out = _writable_dir(Path(a.out))
    t0 = time.time()
    data, runs, w = str(out / "data"), out / "runs", str(a.workers)
    train = ["train", "--config", a.config, "--data", data, "--max-steps", str(a.train_steps), "--seed", "0"]
    steps = [
        ["generate", "--families", DEMO_FAMILIES, "--episodes", str(a.episodes), "--out", data, "--workers", w],
        ["dataset", "validate", data],
        ["dataset", "show", data, "--out", str(out / "contact_sheet.png")],
        [*train, "--out", str(runs / "world_model"), "--wm", "frame,bev"],
        [*train, "--out", str(runs / "action_only")],
        [
            "eval",
            "--policy",
            f"{runs / 'world_model'},{runs / 'action_only'},constant-velocity,idm",
            "--families",
            DEMO_FAMILIES + ",heldout_city",
            "--episodes",
            str(a.eval_episodes),
            "--workers",
            w,
            "--data",
            data,
            "--gallery",
            "1",
            "--out",
            str(out / "eval"),
        ],
    ]
    for argv in steps:
        print(f"\n$ worlddrive {' '.join(argv)}", flush=True)
        code = main(argv)
        if code:
            print(f"demo step failed: worlddrive {' '.join(argv)}", file=sys.stderr)
            return code
    print(f"\ndemo finished in {time.time() - t0:.0f} s; report: {out / 'eval' / 'report.html'}")
    return 0


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worlddrive", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="drive the expert and store a dataset of 2 Hz keyframes")
    g.add_argument("--families", default="straight,intersection_signal,crosswalk,urban_mixed")
    g.add_argument("--episodes", type=int, default=4, help="episodes per family")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True)
    g.add_argument("--workers", type=int, default=1)
    g.add_argument("--ray-address", default=None)
    g.add_argument("--episodes-per-shard", type=int, default=4)
    g.add_argument(
        "--perturb",
        type=float,
        default=0.0,
        help="share of episodes driven with steering/speed noise bursts that the expert recovers from (recovery "
        "data against compounding errors; samples with noise in their future are dropped)",
    )
    g.add_argument(
        "--takeover",
        default=None,
        help="a policy (builtin or a RUN folder) that drives the bursts of perturbed episodes instead of noise: "
        "DAgger-style data, the states it leads to labelled by the expert's recovery",
    )
    g.add_argument(
        "--takeover-seconds",
        default=None,
        help="A-B: each takeover burst lasts between A and B seconds (default 1-3); longer bursts reach the states "
        "a slow drift leads to, e.g. a policy that loses speed on open road",
    )
    g.add_argument(
        "--family-config",
        default=None,
        help="JSON overrides of every family's default config, e.g. '{\"ego_speed\": [2, 16]}' (initial speeds the "
        "expert would not choose there, so that its recovery is in the data); recorded with the dataset",
    )
    g.set_defaults(fn=cmd_generate)

    d = sub.add_parser("dataset", help="validate a dataset or show a contact sheet")
    d.add_argument("action", choices=["validate", "show"])
    d.add_argument("path")
    d.add_argument("--out", default="sheet.png")
    d.add_argument("-n", type=int, default=12)
    d.set_defaults(fn=cmd_dataset)

    v = sub.add_parser("drive", help="drive one episode and write a GIF (camera, BEV, plan, reasoning)")
    v.add_argument(
        "--policy",
        default="expert",
        help="expert, idm, constant-velocity, builtin, or a RUN folder (RUN@PACE: at another pace; RUN@imagine: "
        "the world model picks among the plan slowed down, K = 8; RUN@fast: the plan as the network gives it)",
    )
    v.add_argument("--family", default="urban_mixed")
    v.add_argument("--seed", type=int, default=3)
    v.add_argument("--out", default="drive.gif")
    v.add_argument("--every", type=int, default=2, help="keep every n-th 10 Hz step in the GIF")
    _replan_argument(v)
    v.set_defaults(fn=cmd_drive)

    q = sub.add_parser("probe", help="drive one episode; at every replan, the driver's plan beside the expert's")
    q.add_argument("--policy", required=True, help="as for eval: a RUN folder (RUN@PACE), builtin, idm, ...")
    q.add_argument("--family", required=True)
    q.add_argument("--seed", type=int, required=True)
    q.add_argument("--every", type=float, default=1.0, help="compare every this many seconds (whole replan periods)")
    q.add_argument("--out", default=None, help="also write the rows to this CSV file")
    _replan_argument(q)
    q.set_defaults(fn=cmd_probe)

    c = sub.add_parser("compare", help="did it pay? one policy's DS minus another's on the same episodes, paired")
    c.add_argument(
        "--base",
        required=True,
        help="comma-separated `worlddrive eval --out` folders (DIR:NAME picks a policy), one per training seed",
    )
    c.add_argument("--new", required=True, help="as --base, in the same seed order: the i-th is paired with the i-th")
    c.set_defaults(fn=cmd_compare)

    o = sub.add_parser("export", help="a checkpoint with its decision as an ONNX graph (int8: 1.3-1.7x eager here)")
    o.add_argument("--policy", required=True, help="builtin or a RUN folder (RUN@PACE drives at that pace)")
    o.add_argument("--out", required=True, help="the new checkpoint folder; drive it as --policy OUT")
    o.add_argument("--int8", action="store_true", help="int8 weights for the matrix products (dynamic quantization)")
    o.set_defaults(fn=cmd_export)

    e = sub.add_parser("eval", help="closed-loop Drive Score per family on held-out seeds, with a report")
    e.add_argument(
        "--policy",
        default="builtin",
        help="comma-separated: builtin, RUN folders (RUN@PACE: at another pace; RUN@imagine or RUN@PACE@imagine: "
        "the world model picks among the plan slowed down, K = 8; RUN@fast: the plan as the network gives it; A+B: "
        "A and B's plans averaged), constant-velocity, "
        "idm (the expert always drives too)",
    )
    e.add_argument("--families", default=DEMO_FAMILIES + ",heldout_city")
    e.add_argument("--episodes", type=int, default=20)
    e.add_argument("--seeds", default=None, help="A-B replaces the default held-out seed list")
    e.add_argument("--workers", type=int, default=max(os.cpu_count() or 1, 1))
    e.add_argument("--out", default="out/eval")
    e.add_argument("--ray-address", default=None)
    e.add_argument("--gallery", type=int, default=3, help="GIFs of each policy's worst episodes")
    e.add_argument("--data", default=None, help="a dataset whose val split gives open-loop metrics")
    _replan_argument(e)
    e.set_defaults(fn=cmd_eval)

    t = sub.add_parser("train", help="train the VLA policy (resumable; runs under torchrun for DDP)")
    t.add_argument("--config", default="small", help="preset: tiny, small or base")
    t.add_argument(
        "--data",
        required=True,
        help="dataset folder(s), comma separated: trained on their union (a new policy takes its normalisation "
        "stats and tokenizer from the first); FOLDER*K draws that folder's training samples K times",
    )
    t.add_argument("--out", required=True)
    t.add_argument(
        "--init",
        default=None,
        help="fine-tune: start from this checkpoint (builtin or a RUN folder): its weights, tokenizer and stats",
    )
    t.add_argument("--wm", default="", help="world-model heads, comma separated: vq,frame,bev (empty: action-only)")
    t.add_argument("--lambda-wm", type=float, default=None)
    t.add_argument(
        "--occ-pos-weight",
        type=float,
        default=None,
        help="weight of an occupied cell in the bev head's occupancy loss; default: the preset's (10)",
    )
    t.add_argument("--vq", default=None, help="VQ tokenizer folder (needed by the vq head)")
    t.add_argument("--action-expert", default="query", choices=["query", "flow", "ar"])
    t.add_argument("--backbone", default="native", help="native, or hf:<model name or path to a config.json>")
    t.add_argument("--instruction-encoder", default="bpe", choices=["bpe", "minilm"])
    t.add_argument(
        "--ego-history",
        action=argparse.BooleanOptionalAction,
        help="feed steering, yaw rate and past poses too (--no-ego-history: camera, speed and acceleration only); "
        "default: the preset's",
    )
    t.add_argument("--regression-loss", choices=["l1", "mse"], help="query expert's loss; default: the preset's")
    t.add_argument(
        "--history-dropout",
        type=float,
        help="share of samples trained with their ego history hidden, so steering must also come from the camera "
        "(ChauffeurNet); default: the preset's (0)",
    )
    t.add_argument(
        "--lateral-head",
        action=argparse.BooleanOptionalAction,
        help="steer from a head that sees the camera, speed and command but never the ego history (its lateral "
        "waypoints replace the action expert's); with --init, it is added to the checkpoint. Default: the preset's",
    )
    t.add_argument(
        "--lateral-target",
        choices=["time", "arc"],
        help="what the lateral head learns: the expert's waypoints in time (its pace too), or its path at fixed "
        "distances and its pace apart; with --init and the lateral head training, its weights start from the "
        "checkpoint's (a different output size: drawn with --seed). Default: the preset's",
    )
    t.add_argument(
        "--light-head",
        action=argparse.BooleanOptionalAction,
        help="a CNN that reads the light ahead's colour from the full-resolution frame, for imagination's stop-line "
        "check; with --init, it is added to the checkpoint. Default: the preset's (off)",
    )
    t.add_argument(
        "--light-input",
        action=argparse.BooleanOptionalAction,
        help="feed the light head's colour probabilities to the decision (needs --light-head); with --init, it is "
        "added to the checkpoint, zero-initialised. Default: the preset's (off)",
    )
    t.add_argument(
        "--speed-limit-input",
        action=argparse.BooleanOptionalAction,
        help="feed the map's speed limit at the ego's position beside speed and acceleration (the camera's "
        "speed-limit plates look alike); default: the preset's (off)",
    )
    t.add_argument(
        "--stop-line-input",
        action=argparse.BooleanOptionalAction,
        help="feed the route's next stop line from the map (distance along the route; light, stop or yield) beside "
        "speed and acceleration; the light's colour stays the camera's. Default: the preset's (off)",
    )
    t.add_argument(
        "--speed-input",
        action=argparse.BooleanOptionalAction,
        help="feed the ego's speed and acceleration (--no-speed-input: the plan comes from the camera, command and "
        "map inputs alone, so it cannot just hold the speed the ego has); default: the preset's (on)",
    )
    t.add_argument(
        "--plan-residual",
        action=argparse.BooleanOptionalAction,
        help="learn the plan as its difference from driving straight on at the current speed, in units of that "
        "difference's spread, so braking and speeding up weigh in the loss (needs data generated since session 16); "
        "default: the preset's (off)",
    )
    t.add_argument(
        "--image-size",
        help="HxW the network sees, camera frames area-resized to it (default: the preset's; small: 64x128, which "
        "leaves a traffic light's lamp ~1 px at 30 m; 128x256 is the camera's own size)",
    )
    t.add_argument(
        "--patch-size",
        type=int,
        help="pixels per side of a visual token (default: the preset's; small: 8; 128x256 with 16 keeps small's "
        "8 x 16 tokens)",
    )
    t.add_argument(
        "--train-only",
        choices=["lateral", "light"],
        help="train only this head, the rest of the --init checkpoint frozen (lateral: the lateral head learns to "
        "steer while the checkpoint keeps its speed choices; light: the light head; their steps skip the frozen "
        "parts, so they are fast)",
    )
    t.add_argument("--data-fraction", type=float, default=1.0)
    t.add_argument("--max-steps", type=int, default=500)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--open-loop-samples", type=int, default=256, help="val samples scored after training (0: none)")
    t.set_defaults(fn=cmd_train)

    k = sub.add_parser("train-tokenizer", help="train the VQ image tokenizer of the `vq` world-model head")
    k.add_argument("--data", required=True)
    k.add_argument("--out", required=True)
    k.add_argument("--steps", type=int, default=400)
    k.add_argument("--batch-size", type=int, default=16)
    k.add_argument("--seed", type=int, default=0)
    k.set_defaults(fn=cmd_train_tokenizer)

    b = sub.add_parser("bench", help="speed benchmarks")
    b.add_argument("what", choices=["sim", "train"])
    b.add_argument("--seconds", type=float, default=5.0, help="rough time budget per measurement")
    b.add_argument("--config", default="small", help="train: policy preset, tiny, small or base")
    b.add_argument("--batch-size", type=int, default=16, help="train")
    b.add_argument("--wm", default="", help="train: world-model heads, comma separated: frame,bev")
    b.add_argument("--bf16", action="store_true", help="train: also measure under bfloat16 autocast")
    b.add_argument("--data", default=None, help="train: a dataset folder, read as training does (else model only)")
    b.add_argument("--threads", type=int, default=None, help="train: torch threads (default: torch's)")
    b.set_defaults(fn=cmd_bench)

    x = sub.add_parser("experiment", help="experiments made of the other commands; `ablation`: does the WM pay?")
    x.add_argument("name", choices=["ablation"])
    x.add_argument("--data", required=True)
    x.add_argument("--out", default="out/ablation")
    x.add_argument(
        "--variants",
        help="comma separated, out of action_only, vq, frame, bev, all (vq,frame,bev), frame_bev (frame,bev); "
        "default: action_only, each head alone, then all",
    )
    x.add_argument("--fractions", default="0.25,0.5,1")
    x.add_argument("--seeds", default="0,1", help="training seeds, comma separated")
    x.add_argument("--config", default="small")
    x.add_argument("--max-steps", type=int, default=600)
    x.add_argument("--batch-size", type=int, default=16)
    x.add_argument("--vq-steps", type=int, default=400)
    x.add_argument("--families", default=DEMO_FAMILIES + ",heldout_city")
    x.add_argument("--episodes", type=int, default=10, help="evaluation episodes per family")
    x.add_argument("--eval-seeds", default=None, help="A-B replaces the default held-out seed list")
    x.add_argument("--workers", type=int, default=max(os.cpu_count() or 1, 1))
    x.add_argument(
        "--train-flags",
        default="",
        help="more `worlddrive train` flags for every run, one quoted string (e.g. '--speed-limit-input "
        "--no-ego-history'); not those the ablation sets per run",
    )
    x.add_argument(
        "--finetune-flags",
        default="",
        help="fine-tune every run (`train --init RUN`, its flags again, then these, e.g. '--lateral-head "
        "--train-only lateral --data DIRS --max-steps 1500'); the fine-tuned runs are the ones evaluated",
    )
    x.add_argument("--pace", default="", help="evaluate every run as RUN@PACE (action, cautious or path)")
    _replan_argument(x)
    x.set_defaults(fn=cmd_experiment)

    m = sub.add_parser("demo", help="the main job: data, VLA with and without world model, closed loop, report")
    m.add_argument("--out", default="out/demo")
    m.add_argument("--config", default="small")
    m.add_argument("--train-steps", type=int, default=150, help="training steps of each of the two policies")
    m.add_argument("--episodes", type=int, default=2, help="training episodes per family")
    m.add_argument("--eval-episodes", type=int, default=2, help="evaluation episodes per family")
    m.add_argument("--workers", type=int, default=max(os.cpu_count() or 1, 1))
    m.set_defaults(fn=cmd_demo)
    return p


def _replan_argument(parser: argparse.ArgumentParser) -> None:
    from worlddrive.eval.drivers import REPLAN_EVERY

    parser.add_argument(
        "--replan-every",
        type=int,
        default=REPLAN_EVERY,
        help="run a learned policy's network every N 10 Hz steps, driving its last plan in between (1: every step)",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (KeyError, ValueError, PermissionError, FileNotFoundError, NotADirectoryError) as e:
        # Bad input named in one line; anything else is a bug and keeps its traceback.
        raise SystemExit(f"error: {e.args[0] if e.args else e}") from None


if __name__ == "__main__":
    sys.exit(main())
