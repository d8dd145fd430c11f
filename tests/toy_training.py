"""A toy model and dataset for the training-loop tests; also runnable as a script (the resume test kills it)."""

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from worlddrive.train import STATE_DIR, TrainConfig, train


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 1))

    def forward(self, batch):
        x, y = batch["x"], batch["y"]
        if not torch.isfinite(x).all():
            raise ValueError("batch field 'x' contains NaN or inf")
        loss = F.mse_loss(self.net(x).squeeze(-1), y)
        return loss, {"mse": loss.detach()}

    def configure_optimizers(self, weight_decay, lr):
        return torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)


def toy_data(n=256, seed=0, nan_at=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = torch.tanh(x @ torch.tensor([0.5, -1.0, 0.25, 0.75]))
    if nan_at is not None:
        x[nan_at, 0] = float("nan")
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def collate(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def config(steps, **changes):
    return TrainConfig(
        max_steps=steps,
        batch_size=16,
        lr=1e-2,
        warmup_steps=5,
        save_every=5,
        eval_every=10,
        eval_batches=4,
        log_every=5,
        **changes,
    )


def hold_after_save(at: int):
    """An `on_save` that, once the save of step `at` is written, touches OUT/held and sleeps: a test can then kill the
    run at a known step, however fast the machine is."""

    def on_save(model, out: Path) -> None:
        if json.loads((out / STATE_DIR / "state.json").read_text())["step"] == at:
            (out / "held").touch()
            time.sleep(600)

    return on_save


if __name__ == "__main__":
    out, steps = Path(sys.argv[1]), int(sys.argv[2])
    hold = hold_after_save(int(sys.argv[3])) if len(sys.argv) > 3 else None  # PATH STEPS [HOLD_AT_STEP]
    res = train(Toy(), toy_data(), toy_data(64, seed=1), collate, out, config(steps), progress=False, on_save=hold)
    print(f"FINAL {res['loss']:.10f}")
