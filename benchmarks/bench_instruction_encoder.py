"""Does the frozen MiniLM instruction encoder help the policy with instructions worded in ways it never saw?

    PYTHONPATH=src python benchmarks/bench_instruction_encoder.py --data /work/data/d40 [--steps 300] [--command hide]

Trains the `tiny` policy action-only (lambda_lang = 0, the instruction's only effect is then on the actions) once
per instruction encoder, bpe and minilm, with the same seed on the same fixed subset of training samples, then
measures the ADE (m) on the same validation samples with their instructions
- `train`: as recorded (training-pool wordings, in other episodes),
- `heldout`: rewritten as a held-out paraphrase of the same command and distance (annotate's disjoint pool, whose
  words the policy never saw),
- `other`: rewritten as a training-pool instruction of another command: a control, for if this does not move the
  ADE the policy ignores the instruction, and the held-out gap means nothing.
With `--command keep` (the real setting) the route command also reaches the policy as the state token's input, so
the instruction mostly repeats it; `--command hide` gives every sample the same command input, so that the route is
known from the instruction alone. Prints one `RESULT` line last: ADE per encoder and condition, and per encoder the
gap heldout - train with its standard error (lower is better; ~0 means unseen wordings cost nothing, if `other`
shows that the instruction is used at all).
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worlddrive.data.annotate import COMMANDS, DISTANCE_TEMPLATES, INSTRUCTION_TEMPLATES, instruction
from worlddrive.data.dataset import WorldDriveDataset
from worlddrive.models import PolicyConfig, WorldDrivePolicy
from worlddrive.models.text import corpus, train_tokenizer
from worlddrive.train import TrainConfig, train

ENCODERS = ("bpe", "minilm")
CONDITIONS = ("train", "heldout", "other")
KEEP = ("camera", "ego", "trajectory", "past_trajectory", "command", "instruction", "reasoning")  # what training reads


def _template_patterns() -> list[tuple[re.Pattern[str], str]]:
    """(full-match pattern of a training-pool instruction sentence, its command); {d} captures the distance."""
    patterns = []
    for bank in (INSTRUCTION_TEMPLATES["train"], DISTANCE_TEMPLATES["train"]):
        for command, templates in bank.items():
            for t in templates:
                sentence = re.escape(t[0].upper() + t[1:] + ".")  # as annotate writes it
                patterns.append((re.compile(sentence.replace(r"\{d\}", r"(\d+)")), command))
    return patterns


PATTERNS = _template_patterns()


def parse_instruction(text: str) -> tuple[str, float | None]:
    """(command, distance in metres or None) of a training-pool instruction."""
    for pattern, command in PATTERNS:
        m = pattern.fullmatch(text)
        if m:
            return command, float(m.group(1)) if m.groups() else None
    raise ValueError(f"not a training-pool instruction: {text!r}")


def rewrite(text: str, condition: str, rng: np.random.Generator) -> str:
    """The instruction under `condition` (see the module docstring)."""
    if condition == "train":
        return text
    command, distance = parse_instruction(text)
    if condition == "other":
        command = str(rng.choice([c for c in COMMANDS if c != command]))
    return instruction(command, rng, heldout=condition == "heldout", distance_m=distance)


def load_items(ds: WorldDriveDataset, n: int, hide_command: bool) -> list[dict[str, Any]]:
    """n samples evenly spread over `ds`, only the fields an action-only policy reads."""
    items = []
    for i in np.linspace(0, len(ds) - 1, min(n, len(ds))).astype(int):
        item = {k: v for k, v in ds[int(i)].items() if k in KEEP}
        if hide_command:
            item["command"] = torch.tensor(COMMANDS.index("follow"))
        items.append(item)
    return items


@torch.no_grad()
def ade(policy: WorldDrivePolicy, items: list[dict[str, Any]], batch_size: int = 64) -> np.ndarray:
    """Per-sample average displacement error (m) of the predicted 8 waypoints."""
    policy.eval()
    errors = []
    for start in range(0, len(items), batch_size):
        batch = policy.collate(items[start : start + batch_size])
        pred = policy.predict_trajectory(batch)[:, 0, :, :2]  # (B, W, 2)
        errors.append((pred - batch["trajectory"][..., :2]).norm(dim=-1).mean(-1))
    return torch.cat(errors).numpy()


def measure(
    data: str | Path,
    steps: int = 300,
    batch_size: int = 32,
    train_samples: int = 2048,
    val_samples: int = 512,
    hide_command: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Train one tiny policy per encoder; ade_<encoder>_<condition>, ade_turn_... (samples told to turn left or
    right), gap_<encoder> (heldout - train) and gap_se_<encoder>, its standard error over the validation samples
    (the variation between training seeds is not in it)."""
    train_ds, val_ds = WorldDriveDataset(data, "train"), WorldDriveDataset(data, "val")
    train_items = load_items(train_ds, train_samples, hide_command)
    val_items = load_items(val_ds, val_samples, hide_command)
    rng = np.random.default_rng(seed)
    views = {c: [{**it, "instruction": rewrite(it["instruction"], c, rng)} for it in val_items] for c in CONDITIONS}
    turns = np.array([parse_instruction(it["instruction"])[0] in ("left", "right") for it in val_items])
    tokenizer = train_tokenizer(corpus(data), PolicyConfig.preset("tiny").vocab_size)  # held-out words left out
    cfg = TrainConfig(max_steps=steps, batch_size=batch_size, lr=1e-3, seed=seed, warmup_steps=steps // 10)
    cfg.eval_every = cfg.save_every = steps
    out: dict[str, float] = {}
    for encoder in ENCODERS:
        torch.manual_seed(seed)
        config = PolicyConfig.preset("tiny", instruction_encoder=encoder, lambda_lang=0.0)
        policy = WorldDrivePolicy(config, tokenizer, train_ds.stats)
        with tempfile.TemporaryDirectory() as tmp:
            train(policy, train_items, None, policy.collate_fn(), Path(tmp), cfg, progress=False)
        errors = {condition: ade(policy, items) for condition, items in views.items()}
        for condition, e in errors.items():
            out[f"ade_{encoder}_{condition}"] = float(e.mean())
            out[f"ade_turn_{encoder}_{condition}"] = float(e[turns].mean())
        gap = errors["heldout"] - errors["train"]  # paired: the same samples, only the wording differs
        out[f"gap_{encoder}"] = float(gap.mean())
        out[f"gap_se_{encoder}"] = float(gap.std(ddof=1) / np.sqrt(len(gap)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a dataset folder from `worlddrive generate`")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-samples", type=int, default=2048)
    parser.add_argument("--val-samples", type=int, default=512)
    parser.add_argument("--command", choices=["keep", "hide"], default="keep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    res = measure(a.data, a.steps, a.batch_size, a.train_samples, a.val_samples, a.command == "hide", a.seed)
    for encoder in ENCODERS:
        row = "  ".join(f"{c} {res[f'ade_{encoder}_{c}']:.3f}" for c in CONDITIONS)
        turn = "  ".join(f"{c} {res[f'ade_turn_{encoder}_{c}']:.3f}" for c in CONDITIONS)
        print(f"{encoder:6s} ADE (m): {row}   turns only: {turn}")
    print(
        f"RESULT command={a.command} steps={a.steps} seconds={time.time() - t0:.0f} "
        + " ".join(f"{k}={v:.3f}" for k, v in res.items() if not k.startswith("ade_turn"))
    )


if __name__ == "__main__":
    main()
