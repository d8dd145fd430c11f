"""`worlddrive compare`: did a change pay? One policy's closed-loop Drive Score against another's on the very same
episodes, paired per training seed, from the folders `worlddrive eval` wrote.

Run-to-run spread is as large as most single changes here (one training seed to the next moved DS by 0.05-0.11,
results/README.md session 18), so a claim needs the same episodes under both policies and more than one seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from worlddrive.eval.drivers import BASELINES
from worlddrive.eval.evaluate import episode_ds
from worlddrive.sim.scenarios import HELDOUT_FAMILIES

Scores = dict[tuple[str, int], float]  # (family, seed) -> Drive Score
PARTS = {"training_layouts": False, "heldout_layout": True}  # the held-out layout family apart from the rest


def paired_difference(pairs: list[tuple[Scores, Scores]], boot: int = 2000) -> dict | None:
    """DS of `new` minus `base`, for (new, base) pairs (one per training seed), on the episodes every pair holds:
    averaged over the pairs per episode, then over episodes. None when no episode is shared.

    The 95 % interval is a seeded bootstrap over episodes: how much the luck of the draw of episodes could move the
    gain, not how much another training seed would (`per_seed` shows the pairs)."""
    keys = sorted(set.intersection(*(set(new) & set(base) for new, base in pairs)))
    if not keys:
        return None
    diff = np.array([[new[k] - base[k] for k in keys] for new, base in pairs])  # (pairs, episodes)
    mean = diff.mean(0)  # (episodes,) averaged over training seeds
    picks = np.random.default_rng(0).integers(0, len(keys), (boot, len(keys)))
    low, high = np.percentile(mean[picks].mean(1), [2.5, 97.5])
    return {
        "gain": float(mean.mean()),
        "low": float(low),
        "high": float(high),
        "per_seed": [float(d.mean()) for d in diff],
        "episodes": len(keys),
    }


def per_seed_text(gain: dict) -> str:
    """A `paired_difference`'s gain per training seed, as tables print it: "+0.062, -0.104"."""
    return ", ".join(f"{d:+.3f}" for d in gain["per_seed"])


def policy_scores(spec: str) -> Scores:
    """`DIR` or `DIR:NAME`: the per-episode DS of one policy evaluated into DIR (`worlddrive eval --out DIR`). NAME is
    the policy's name in DIR's tables; without it, DIR must hold exactly one policy besides the baselines."""
    folder, _, name = spec.partition(":")
    summary = Path(folder) / "summary.json"
    if not summary.is_file():
        raise FileNotFoundError(f"{folder}: no summary.json, not a folder written by `worlddrive eval --out`")
    scores = episode_ds(Path(folder), json.loads(summary.read_text())["replan_every"])
    if name:
        if name not in scores:
            raise KeyError(f"{folder} holds no policy {name!r}; it holds {', '.join(scores)}")
        return scores[name]
    learned = [n for n in scores if n not in BASELINES]
    if len(learned) != 1:
        raise ValueError(f"{folder} holds {len(learned)} learned policies ({', '.join(learned)}): name one, DIR:NAME")
    return scores[learned[0]]


def compare(base: list[str], new: list[str], boot: int = 2000) -> dict:
    """new[i] against base[i] (`policy_scores` specs; the i-th of each trained with the same seed), on the training
    layouts and on the held-out layout family apart, and per family (where a change gains and where it loses)."""
    if not base or len(base) != len(new):
        raise ValueError(f"compare needs as many new evaluations as base ones (one per training seed): {new} / {base}")
    pairs = [(policy_scores(n), policy_scores(b)) for n, b in zip(new, base, strict=True)]

    def only(keep) -> dict | None:
        return paired_difference([tuple({k: v for k, v in s.items() if keep(k[0])} for s in p) for p in pairs], boot)

    result: dict = {part: only(lambda f, held=held: (f in HELDOUT_FAMILIES) == held) for part, held in PARTS.items()}
    families = dict.fromkeys(f for new_scores, _ in pairs for f, _ in new_scores)
    result["families"] = {f: gain for f in families if (gain := only(lambda g, f=f: g == f)) is not None}
    return result
