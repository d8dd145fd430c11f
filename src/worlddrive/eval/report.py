"""One static HTML page per evaluation: tables, plots and rollout GIFs a researcher can skim.

The page is self-contained (inline CSS, no JavaScript, no CDN) and links only to files inside the evaluation folder,
so the folder can be zipped, copied or served as it is. Every piece of text is escaped: policy names, families and
generated reasoning come from code and models we do not trust to be well-formed HTML.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
from pathlib import Path
from urllib.parse import quote

import numpy as np
from matplotlib.figure import Figure

from worlddrive.eval.compare import per_seed_text

ASSETS = "report_assets"
EXPERT = "expert"
DS_TARGET = 0.95  # DESIGN.md targets: learned DS ≥ 0.95 × expert, ≥ 0.90 × on the held-out layout
HELDOUT_TARGET = 0.90
SUB_SCORES = ("nc", "dac", "tlc", "yc", "ttc", "ep", "c", "sl")
# open-loop metric name -> (column label, "↑" higher is better / "↓" lower is better); unknown names show as they are
OPEN_LOOP = {
    "ade": ("ADE m", "↓"),
    "fde": ("FDE m", "↓"),
    "plan_collision_rate": ("plan coll.", "↓"),
    "red_overrun": ("plans past a red", "↓"),
    "frame_psnr": ("PSNR dB", "↑"),
    "frame_ssim": ("SSIM", "↑"),
    "bev_iou_true_plan": ("BEV IoU", "↑"),
    "light_acc_1s": ("light acc +1 s", "↑"),
    "light_acc_2s": ("light acc +2 s", "↑"),
    "fact_acc": ("reasoning facts", "↑"),
}
REFERENCE_COLOUR = "#4d4d4d"  # the expert, and action-only in the ablation: the baselines everything is read against
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")

CSS = """
body { font: 14px/1.45 "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; color: #1d1d1f; margin: 0;
  background: #f6f6f4; }
main { max-width: 1440px; margin: 0 auto; padding: 20px 28px 60px; }
h1 { font-size: 24px; margin: 8px 0 2px; }
h2 { font-size: 18px; margin: 34px 0 8px; border-bottom: 1px solid #d8d8d4; padding-bottom: 4px; }
.meta { color: #5a5a5a; margin: 0 0 6px; }
.note { color: #5a5a5a; font-size: 12px; margin: 4px 0 10px; }
a { color: #1f5fa8; }
table { border-collapse: collapse; background: #fff; font-variant-numeric: tabular-nums; font-size: 13px; }
th, td { padding: 4px 9px; border-bottom: 1px solid #ececea; text-align: right; white-space: nowrap; }
th { background: #efefec; font-weight: 600; white-space: normal; vertical-align: bottom; }
.wide { overflow-x: auto; }
thead tr:first-child th { border-bottom: 1px solid #d8d8d4; }
th.group { text-align: center; color: #5a5a5a; font-weight: 500; }
td.name, th.name { text-align: left; }
tbody.family tr:last-child td { border-bottom: 2px solid #d8d8d4; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
.pass { background: #d8f0d8; }
.fail { background: #f7d9d6; }
.best { font-weight: 700; }
.ref { color: #8a8a8a; }
.tag { font-size: 11px; padding: 1px 5px; border-radius: 8px; background: #e4e0f5; color: #3b2f80; margin-left: 4px; }
figure { margin: 8px 0; }
figure img { max-width: 100%; background: #fff; border: 1px solid #e2e2de; }
pre.cmd { background: #fff; border: 1px solid #e2e2de; padding: 6px 10px; white-space: pre-wrap; font-size: 12px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 16px; }
.card { background: #fff; border: 1px solid #e2e2de; border-radius: 6px; overflow: hidden; }
.card img { width: 100%; display: block; image-rendering: pixelated; background: #222; }
.card .nogif { padding: 40px 0; text-align: center; color: #aaa; background: #2a2a2a; }
.card .body { padding: 8px 12px 12px; }
.card .head { display: flex; justify-content: space-between; align-items: baseline; gap: 8px; }
.card .ds { font-weight: 700; padding: 1px 7px; border-radius: 4px; }
.card ul { margin: 6px 0; padding-left: 18px; font-size: 12px; }
.card blockquote { margin: 6px 0 0; padding: 4px 10px; border-left: 3px solid #c9c4e8; color: #3c3c3c; font-size: 12px;
  white-space: pre-wrap; }
.card details { margin-top: 6px; font-size: 12px; color: #a33; }
.card details pre { white-space: pre-wrap; color: #444; max-height: 220px; overflow: auto; }
.clean { color: #2a7a2a; font-size: 12px; margin: 6px 0; }
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def _num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: object, spec: str = ".3f") -> str:
    return format(v, spec) if _num(v) else "—"


def _auto(v: object) -> str:
    """Open-loop metrics span PSNR in tens of dB to rates near zero: one decimal from 10 up, three below."""
    if not _num(v):
        return "—"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"


def _shade(v: object) -> str:
    """Red (0) to green (1) cell background, so a bad sub-score is seen before it is read."""
    if not _num(v):
        return ""
    return f' style="background: hsl({120 * min(max(v, 0.0), 1.0):.0f}, 62%, 86%)"'


def _colours(names: list[str], reference: str) -> dict[str, str]:
    """The same colour for a name in every plot and table; the baseline is grey."""
    others = iter(PALETTE * (len(names) // len(PALETTE) + 1))
    return {n: REFERENCE_COLOUR if n == reference else next(others) for n in names}


def _swatch(colour: str) -> str:
    return f'<span class="swatch" style="background: {colour}"></span>'


def _local_link(eval_dir: Path, rel: object) -> str | None:
    """URL of a file inside eval_dir, or None when it is missing or points outside (the page must stay portable)."""
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute():
        return None
    root = eval_dir.resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return quote(target.relative_to(root).as_posix())


def _family_order(summary: dict) -> list[str]:
    """The evaluation's family order, then any family only the rows name (such as the held-out layout)."""
    order = list(summary.get("families") or [])
    for pol in summary["policies"].values():
        order += [row["family"] for row in pol["families"] if row["family"] not in order]
    return order


def _summary_section(summary: dict, colours: dict[str, str]) -> str:
    policies: dict[str, dict] = summary["policies"]
    expert_held = policies.get(EXPERT, {}).get("heldout_layout_ds")
    metrics = [m for m in OPEN_LOOP if any(m in p["open_loop"] for p in policies.values())]
    metrics += list(dict.fromkeys(m for p in policies.values() for m in p["open_loop"] if m not in metrics))
    learned = [p for n, p in policies.items() if n != EXPERT]

    def best(values: list[object], arrow: str) -> float | None:
        nums = [v for v in values if _num(v)]
        return (max(nums) if arrow == "↑" else min(nums)) if nums else None

    closed = [("ds", "↑"), ("heldout_layout_ds", "↑"), ("collisions", "↓"), ("route_completion", "↑")]
    bests = {k: best([p.get(k) for p in learned], arrow) for k, arrow in closed}
    bests |= {m: best([p["open_loop"].get(m) for p in learned], OPEN_LOOP.get(m, ("", ""))[1]) for m in metrics}

    def cell(value: object, text: str, key: str, extra: str = "") -> str:
        cls = " ".join(c for c in (extra, "best" if _num(value) and value == bests.get(key) else "") if c)
        return f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>"

    rows = []
    for name, p in policies.items():
        ratio = p.get("ds_ratio")
        if name == EXPERT:
            ratio_td = '<td class="ref">reference</td>'
        elif _num(ratio):
            ratio_td = f'<td class="{"pass" if ratio >= DS_TARGET else "fail"}">{ratio:.2f}×</td>'
        else:
            ratio_td = "<td>—</td>"
        held = p.get("heldout_layout_ds")
        held_text = _fmt(held)
        held_cls = ""
        if name != EXPERT and _num(held) and _num(expert_held) and expert_held > 0:
            held_ratio = held / expert_held
            held_text += f' <span class="ref">({held_ratio:.2f}×)</span>'
            held_cls = "pass" if held_ratio >= HELDOUT_TARGET else "fail"
        rc = p.get("route_completion")
        rows.append(
            "<tr>"
            f'<td class="name">{_swatch(colours[name])}{_e(name)}</td>'
            + cell(p.get("ds"), _fmt(p.get("ds")), "ds")
            + ratio_td
            + cell(held, held_text, "heldout_layout_ds", held_cls)
            + cell(p.get("collisions"), _fmt(p.get("collisions"), ".1f"), "collisions")
            + cell(rc, f"{rc:.1%}" if _num(rc) else "—", "route_completion")
            + f"<td>{_e(p.get('episodes', '—'))}</td>"
            + f'<td class="{"fail" if p.get("errors") else ""}">{_e(p.get("errors", "—"))}</td>'
            + "".join(cell(p["open_loop"].get(m), _auto(p["open_loop"].get(m)), m) for m in metrics)
            + "</tr>"
        )
    ol_head = "".join(
        f"<th>{_e(OPEN_LOOP.get(m, (m.replace('_', ' '), ''))[0])} {OPEN_LOOP.get(m, ('', ''))[1]}</th>"
        for m in metrics
    )
    seeds = summary.get("seeds") or []
    span = f"closed loop, seeds {seeds[0]}–{seeds[-1]}" if seeds else "closed loop"
    group = f'<th class="group" colspan="{len(metrics)}">open loop · world model · reasoning</th>' if metrics else ""
    return f"""
<h2>Summary</h2>
<div class="wide"><table class="summary">
<thead>
<tr><th></th><th class="group" colspan="7">{_e(span)}</th>{group}</tr>
<tr><th class="name">policy</th><th>DS ↑</th><th title="target ≥ {DS_TARGET}">DS / expert</th>
<th title="target ≥ {HELDOUT_TARGET} × expert">held-out layout DS ↑</th><th>at-fault coll. /100 ep ↓</th>
<th>route completion ↑</th><th>episodes</th><th>errors</th>{ol_head}</tr>
</thead>
<tbody>
{"".join(rows)}
</tbody>
</table></div>
<p class="note">DS = NC·DAC·TLC·YC·(5·TTC + 5·EP + 2·C + 2·SL)/14, mean over episodes (a crashed episode counts 0).
Green / red: the learned policy meets / misses the target of {DS_TARGET}× expert DS ({HELDOUT_TARGET}× on the held-out
layout). Bold: best learned policy per column.</p>
"""


def _family_bars(summary: dict, order: list[str], colours: dict[str, str], out: Path) -> None:
    policies = summary["policies"]
    held = summary.get("heldout_family")
    fig = Figure(figsize=(min(16.0, max(8.0, 1.5 + 0.26 * len(order) * len(policies))), 3.8), dpi=110)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(policies))
    x = np.arange(len(order))
    for i, (name, p) in enumerate(policies.items()):
        by_family = {row["family"]: row.get("ds", np.nan) for row in p["families"]}
        ds = [by_family.get(f, np.nan) for f in order]
        ax.bar(x + (i - (len(policies) - 1) / 2) * width, ds, width, label=name, color=colours[name])
    if held in order:
        ax.axvspan(order.index(held) - 0.5, order.index(held) + 0.5, color="#e4e0f5", lw=0, zorder=0)
    ax.set_xticks(x, [f"{f}\n(held-out)" if f == held else f for f in order], fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Drive Score")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(ncol=min(len(policies), 6), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=9)
    fig.tight_layout()
    fig.savefig(out)


def _family_section(summary: dict, order: list[str], colours: dict[str, str], bars: str) -> str:
    held = summary.get("heldout_family")
    bodies = []
    for fam in order:
        rows = [(n, r) for n, p in summary["policies"].items() for r in p["families"] if r["family"] == fam]
        tag = '<span class="tag">held-out layout</span>' if fam == held else ""
        trs = []
        for i, (name, r) in enumerate(rows):
            first = f'<td class="name" rowspan="{len(rows)}"><b>{_e(fam)}</b>{tag}</td>' if i == 0 else ""
            trs.append(
                f"<tr>{first}"
                f'<td class="name">{_swatch(colours[name])}{_e(name)}</td>'
                f"<td>{_e(r.get('episodes', '—'))}</td>"
                f'<td class="{"fail" if r.get("errors") else ""}">{_e(r.get("errors", "—"))}</td>'
                f"<td{_shade(r.get('ds'))}><b>{_fmt(r.get('ds'))}</b></td>"
                + "".join(f"<td{_shade(r.get(k))}>{_fmt(r.get(k), '.2f')}</td>" for k in SUB_SCORES)
                + f"<td>{_e(r.get('collisions_at_fault', '—'))}</td>"
                f"<td>{_fmt(r.get('collisions_at_fault_per_km'), '.2f')}</td>"
                f"<td>{_fmt(r.get('red_lights_per_km'), '.2f')}</td>"
                f"<td>{_fmt(r.get('route_completion'), '.0%')}</td>"
                f"<td>{_fmt(r.get('km'), '.2f')}</td></tr>"
            )
        bodies.append(f'<tbody class="family">{"".join(trs)}</tbody>')
    subs = "".join(f"<th>{k.upper()}</th>" for k in SUB_SCORES)
    return f"""
<h2>Drive Score per family</h2>
<figure><img src="{bars}" alt="Drive Score per scenario family, one bar per policy"></figure>
<h2>Sub-scores per family</h2>
<div class="wide"><table class="families">
<thead><tr><th class="name">family</th><th class="name">policy</th><th>episodes</th><th>errors</th><th>DS</th>{subs}
<th>at-fault coll.</th><th>coll. /km</th><th>red lights /km</th><th>route compl.</th><th>km</th></tr></thead>
{"".join(bodies)}
</table></div>
<p class="note">NC no at-fault collision · DAC drivable area · TLC traffic lights · YC yielding · TTC time to collision
· EP ego progress · C comfort · SL speed limit. Cells shade from red (0) to green (1).</p>
"""


def _ablation_stats(rows: list[dict]) -> dict[tuple[str, float], dict[str, tuple[float, float, int]]]:
    """(variant, fraction) -> metric -> (mean, std, n) over seeds; variants and fractions in the order they appear."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], float(r["fraction"])), []).append(r)
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    out = {}
    for key in sorted(groups, key=lambda k: (variants.index(k[0]), k[1])):
        stats = {}
        for m in ("ds", "heldout_ds", "ade", "collisions"):
            vals = np.array([r[m] for r in groups[key] if _num(r.get(m))], dtype=float)
            if len(vals):
                stats[m] = (float(vals.mean()), float(vals.std()), len(vals))
        out[key] = stats
    return out


def _scaling_plot(rows: list[dict], stats: dict, colours: dict[str, str], out: Path) -> None:
    panels = [
        (m, title)
        for m, title in (("ds", "Drive Score"), ("heldout_ds", "held-out layout DS"))
        if any(m in s for s in stats.values())
    ]
    fig = Figure(figsize=(5.2 * len(panels), 3.8), dpi=110)
    for j, (metric, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), j + 1)
        for variant, colour in colours.items():
            pts = [(f, s[metric]) for (v, f), s in stats.items() if v == variant and metric in s]
            if not pts:
                continue
            fr = np.array([f for f, _ in pts])
            mean, std = (np.array([s[i] for _, s in pts]) for i in (0, 1))
            ax.plot(fr, mean, "o-", color=colour, label=variant, lw=1.8, ms=5)
            ax.fill_between(fr, mean - std, mean + std, color=colour, alpha=0.15, lw=0)
            seeds = [(float(r["fraction"]), r[metric]) for r in rows if r["variant"] == variant and _num(r.get(metric))]
            ax.scatter([f for f, _ in seeds], [v for _, v in seeds], s=9, color=colour, alpha=0.45, lw=0)
        base = stats.get(("action_only", 1.0), {}).get(metric)
        if base:
            ax.axhline(base[0], color=REFERENCE_COLOUR, ls=":", lw=1, label="action-only @ 100 %")
        fractions = sorted({f for _, f in stats})
        ax.set_xscale("log", base=2)
        ax.set_xticks(fractions, [f"{f:.0%}" for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("training data fraction")
        ax.set_title(title, fontsize=11)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    fig.axes[0].legend(frameon=False, fontsize=9)
    fig.tight_layout()
    fig.savefig(out)


def _scaling_section(ablation: dict, stats: dict, plot: str) -> str:
    def ms(s: dict, m: str, spec: str) -> str:
        return f'{s[m][0]:{spec}} <span class="ref">± {s[m][1]:{spec}}</span>' if m in s else "—"

    trs = "".join(
        f'<tr><td class="name">{_e(v)}</td><td>{f:.0%}</td><td>{s["ds"][2] if "ds" in s else "—"}</td>'
        f"<td>{ms(s, 'ds', '.3f')}</td><td>{ms(s, 'heldout_ds', '.3f')}</td><td>{ms(s, 'ade', '.2f')}</td>"
        f"<td>{ms(s, 'collisions', '.1f')}</td></tr>"
        for (v, f), s in stats.items()
    )
    cmd = ablation.get("command")
    return f"""
<h2>Data scaling</h2>
<figure><img src="{plot}" alt="Drive Score against training data fraction per variant"></figure>
<p class="note">Line: mean over training seeds; band: ± one standard deviation; dots: single seeds.</p>
<div class="wide"><table class="ablation">
<thead><tr><th class="name">variant</th><th>data</th><th>seeds</th><th>DS ↑</th><th>held-out DS ↑</th><th>ADE m ↓</th>
<th>at-fault coll. /100 ep ↓</th></tr></thead>
<tbody>{trs}</tbody>
</table></div>
{_gains_table(ablation.get("gains") or [])}
{f'<p class="note">Reproduce with:</p><pre class="cmd">{_e(cmd)}</pre>' if cmd else ""}
"""


def _gains_table(gains: list[dict]) -> str:
    """experiment.paired_gains: the world model's DS gain over action-only on the same episodes."""
    if not gains:
        return ""
    trs = "".join(
        f'<tr><td class="name">{_e(g["variant"])}</td><td>{g["fraction"]:.0%}</td><td>{g["against"]:.0%}</td>'
        f"<td>{g['gain']:+.3f}</td><td>[{g['low']:+.3f}, {g['high']:+.3f}]</td>"
        f"<td>{_e(per_seed_text(g))}</td><td>{g['episodes']}</td></tr>"
        for g in gains
    )
    return f"""
<h3>Does the world model pay? Paired on the same episodes</h3>
<div class="wide"><table class="gains">
<thead><tr><th class="name">variant</th><th>data</th><th>vs action-only at</th><th>DS gain</th>
<th>95 % interval</th><th>per training seed</th><th>episodes</th></tr></thead>
<tbody>{trs}</tbody>
</table></div>
<p class="note">Gain: the variant's DS minus action-only's on the same held-out episodes (training-layout families) and
training seeds. Interval: bootstrap over episodes; it does not cover the spread between training seeds.</p>
"""


def _gallery_section(eval_dir: Path, gallery: list[dict], colours: dict[str, str]) -> str:
    cards = []
    # Worst first: the episodes a researcher has to look at; ties in a stable, readable order.
    for g in sorted(
        gallery, key=lambda g: (g["ds"] if _num(g.get("ds")) else -1.0, g["policy"], g["family"], g["seed"])
    ):
        src = _local_link(eval_dir, g.get("gif"))
        alt = f"{g['policy']} on {g['family']}, seed {g['seed']}"
        if src:
            media = f'<a href="{src}"><img src="{src}" alt="{_e(alt)}"></a>'
        elif g.get("gif"):  # named but missing or outside the folder: say which, so the writer can be fixed
            media = f'<div class="nogif">GIF not in this folder: {_e(g["gif"])}</div>'
        else:
            media = '<div class="nogif">no GIF recorded</div>'
        infractions = g.get("infractions") or []
        inf_html = (
            "<ul>"
            + "".join(f"<li>t = {_fmt(i.get('t'), '.1f')} s: {_e(i.get('what', '?'))}</li>" for i in infractions)
            + "</ul>"
            if infractions
            else '<p class="clean">no infractions recorded</p>'
        )
        reasoning = f"<blockquote>{_e(g['reasoning'])}</blockquote>" if g.get("reasoning") else ""
        error = g.get("error")
        err_html = (
            f"<details><summary>error: {_e(error.strip().splitlines()[-1])}</summary><pre>{_e(error)}</pre></details>"
            if error and error.strip()
            else ""
        )
        colour = colours.get(g["policy"], REFERENCE_COLOUR)
        cards.append(
            f'<div class="card">{media}<div class="body"><div class="head">'
            f"<span>{_swatch(colour)}<b>{_e(g['policy'])}</b> · {_e(g['family'])} · seed {_e(g['seed'])}</span>"
            f'<span class="ds"{_shade(g.get("ds"))}>DS {_fmt(g.get("ds"), ".2f")}</span></div>'
            f"{inf_html}{reasoning}{err_html}</div></div>"
        )
    return f"""
<h2>Rollouts, worst first</h2>
<div class="gallery">
{"".join(cards)}
</div>
"""


def write_report(eval_dir: Path, ablation: Path | None = None) -> Path:
    """Write eval_dir/report.html (plots in eval_dir/report_assets/) from summary.json and an optional ablation."""
    eval_dir = Path(eval_dir)
    summary = json.loads((eval_dir / "summary.json").read_text())
    for p in summary["policies"].values():  # optional parts may be absent or null: one shape from here on
        p["open_loop"] = p.get("open_loop") or {}
        p["families"] = p.get("families") or []
    assets = eval_dir / ASSETS
    shutil.rmtree(assets, ignore_errors=True)  # a plot left from an earlier report must not linger
    assets.mkdir(parents=True)
    names = list(summary["policies"])
    colours = _colours(names, EXPERT)
    order = _family_order(summary)

    links = " · ".join(f'<a href="{n}">{n}</a>' for n in ("summary.json", "episodes.jsonl") if (eval_dir / n).is_file())
    seeds = summary.get("seeds") or []
    held = summary.get("heldout_family")
    facts = [f"{len(names)} policies", f"{len(order)} families"]
    facts += [f"seeds {seeds[0]}–{seeds[-1]}"] if seeds else []
    facts += [f"held-out layout: {held}"] if held else []
    parts = [
        f"<h1>WorldDrive evaluation: {_e(eval_dir.resolve().name)}</h1>",
        f'<p class="meta">{_e(" · ".join(facts))}</p>',
        f'<p class="meta">data: {links}</p>' if links else "",
        _summary_section(summary, colours),
    ]
    if order and any(p["families"] for p in summary["policies"].values()):
        _family_bars(summary, order, colours, assets / "family_ds.png")
        parts.append(_family_section(summary, order, colours, f"{ASSETS}/family_ds.png"))
    if ablation is not None:
        abl = json.loads(Path(ablation).read_text())
        rows = abl.get("rows") or []
        if rows:
            stats = _ablation_stats(rows)
            variant_colours = _colours(list(dict.fromkeys(v for v, _ in stats)), "action_only")
            _scaling_plot(rows, stats, variant_colours, assets / "data_scaling.png")
            parts.append(_scaling_section(abl, stats, f"{ASSETS}/data_scaling.png"))
    if summary.get("gallery"):
        parts.append(_gallery_section(eval_dir, summary["gallery"], colours))

    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>WorldDrive evaluation: {_e(eval_dir.resolve().name)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
{"".join(parts)}
</main>
</body>
</html>
"""
    out = eval_dir / "report.html"
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)  # a reader never sees a half-written page
    return out
