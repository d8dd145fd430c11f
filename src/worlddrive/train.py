"""The training loop: AdamW, warmup + cosine, gradient clipping, validation, TensorBoard, resumable, DDP-ready.

Works with any model whose `forward(batch)` returns `(loss, logs)` and that has `configure_optimizers(weight_decay,
lr)` (nanoGPT / LeRobot style). Resuming is exact: the training state (weights, optimizer moments, RNG states and
the position in the epoch's shuffled order) is written atomically as safetensors + JSON every `save_every` steps, so a
run killed at any moment and started again with the same command continues where the last save left it and follows
the same batch order. Under `torchrun --nproc_per_node N` each rank takes every N-th index of the same shuffled order,
so N processes see exactly the global batches one process would (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset

STATE_DIR = "train_state"


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 16  # global batch, split over DDP ranks
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    eval_every: int = 100  # steps between validation passes
    eval_batches: int = 20
    save_every: int = 50  # steps between resumable checkpoints
    seed: int = 0
    log_every: int = 10
    train_only: tuple[str, ...] = ()  # names of the modules to train, the rest frozen; empty: train everything

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "eval_every", "save_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to `lr * min_lr_ratio` at `max_steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))


def freeze_all_but(model: nn.Module, names: tuple[str, ...]) -> None:
    """Leave only the parameters of the named submodules trainable (e.g. a head added to a trained checkpoint)."""
    modules = dict(model.named_modules())
    unknown = [n for n in names if not n or n not in modules or not any(True for _ in modules[n].parameters())]
    if unknown:
        have = sorted(n for n, _ in model.named_children())
        raise ValueError(f"train_only names {unknown} are not submodules with parameters; the model's parts: {have}")
    prefixes = tuple(n + "." for n in names)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefixes))


# ---------------------------------------------------------------------- distributed helpers


def ddp_setup() -> tuple[int, int, torch.device]:
    """(rank, world size, device); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return rank, world, device


def batch_order(n: int, batch_size: int, seed: int, epoch: int | None) -> list[list[int]]:
    """The global batches of an epoch: a seeded permutation (or the plain order for epoch None) cut into full batches
    (a ragged tail is dropped so every step has the same global batch size)."""
    perm = np.arange(n) if epoch is None else np.random.default_rng([seed, epoch]).permutation(n)
    return [perm[i : i + batch_size].tolist() for i in range(0, n - batch_size + 1, batch_size)]


# ---------------------------------------------------------------------- checkpoint of the training state


def save_state(out: Path, model: nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    """Write weights, optimizer moments and RNG states as safetensors + JSON into a temporary folder, then swap it in
    with one rename: a kill at any moment leaves either the old or the new state, never a mix."""
    tmp = out / (STATE_DIR + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    tensors, groups = {}, []
    names = {id(p): n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]})
        for p in g["params"]:
            for key, value in opt.state.get(p, {}).items():
                tensors[f"{names[id(p)]}::{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng::torch"] = torch.get_rng_state()
    save_file(tensors, tmp / "optimizer.safetensors")
    meta = {
        **meta,
        "param_groups": groups,
        "numpy_rng": _jsonable(np.random.get_state()),
        "python_rng": _jsonable(random.getstate()),
    }
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    final = out / STATE_DIR
    old = out / (STATE_DIR + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_state(out: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Restore a saved training state into `model` and `opt`; None when there is none. A state left half-swapped by
    a kill between the two renames of `save_state` is recovered from the `.old` folder."""
    final, old = out / STATE_DIR, out / (STATE_DIR + ".old")
    if not final.exists() and old.exists():
        old.rename(final)
    if not final.exists():
        return None
    meta = json.loads((final / "state.json").read_text())
    weights = load_file(final / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"training state in {final} does not match the model: missing {sorted(missing)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]} (delete the folder to start over)"
        )
    tensors = load_file(final / "optimizer.safetensors")
    params = dict(model.named_parameters())
    for g, saved in zip(opt.param_groups, meta["param_groups"], strict=True):
        g.update({k: v for k, v in saved.items() if k != "params"})
    for key, value in tensors.items():
        name, _, field = key.partition("::")
        if name == "rng":
            torch.set_rng_state(value)
        else:
            opt.state[params[name]][field] = value
    np.random.set_state(_tuple(meta["numpy_rng"]))
    random.setstate(_tuple(meta["python_rng"]))
    return meta


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return {"__nd__": x.tolist(), "dtype": str(x.dtype)}
    if isinstance(x, tuple | list):
        return [_jsonable(v) for v in x]
    return x


def _tuple(x):
    if isinstance(x, dict) and "__nd__" in x:
        return np.asarray(x["__nd__"], dtype=x["dtype"])
    if isinstance(x, list):
        return tuple(_tuple(v) for v in x)
    return x


# ---------------------------------------------------------------------- the loop


def _batches(
    ds: Dataset, order: list[list[int]], start: int, rank: int, world: int, collate: Callable[[list], dict]
) -> Iterator[tuple[int, dict]]:
    for b in range(start, len(order)):
        yield b, collate([ds[i] for i in order[b][rank::world]])


@torch.no_grad()
def evaluate(model: nn.Module, ds: Dataset, collate: Callable, cfg: TrainConfig, device: torch.device) -> dict:
    """Mean of every logged term over the first `eval_batches` batches of the (fixed-order) validation set."""
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    for _, batch in _batches(
        ds, batch_order(len(ds), cfg.batch_size, cfg.seed, None)[: cfg.eval_batches], 0, 0, 1, collate
    ):
        loss, logs = model(_to(batch, device))
        for k, v in {"loss": float(loss), **logs}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        n += 1
    model.train()
    return {k: v / max(n, 1) for k, v in sums.items()}


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train(
    model: nn.Module,
    train_ds: Dataset,
    val_ds: Dataset | None,
    collate: Callable[[list], dict],
    out: Path,
    cfg: TrainConfig,
    progress: bool = True,
    on_save: Callable[[nn.Module, Path], None] | None = None,
) -> dict:
    """Train until `cfg.max_steps`, resuming from `out/train_state` when present. Returns the final logs.

    `on_save(model, out)` is called with the bare model at every save (e.g. to write `save_pretrained`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from torch.utils.tensorboard import SummaryWriter

    owns_group = not dist.is_initialized()
    rank, world, device = ddp_setup()
    if cfg.batch_size % world:
        raise ValueError(f"global batch_size {cfg.batch_size} must be divisible by the {world} DDP processes")
    if len(train_ds) < cfg.batch_size:
        raise ValueError(f"training set has {len(train_ds)} samples, fewer than one batch of {cfg.batch_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model.to(device)
    if cfg.train_only:
        freeze_all_but(model, cfg.train_only)
    opt = model.configure_optimizers(cfg.weight_decay, cfg.lr)
    meta = load_state(out, model, opt) or {"step": 0, "epoch": 0, "batch": 0, "skipped": 0}
    # find_unused_parameters: a config can leave whole parts without gradient (the reasoning slot when lambda_lang = 0,
    # the BPE instruction embeddings under minilm), which plain DDP treats as an error on the second step
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model
    writer = SummaryWriter(str(out / "tensorboard")) if rank == 0 else None
    if rank == 0:
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    step, epoch, start = meta["step"], meta["epoch"], meta["batch"]
    logs: dict[str, float] = meta.get("logs", {})  # a finished run started again reports its last logs
    t0, seen = time.time(), 0
    bar = Progress(
        TextColumn("train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        disable=not progress or rank != 0,
    )
    with bar:
        task = bar.add_task("train", total=cfg.max_steps, completed=step, info="")
        while step < cfg.max_steps:
            order = batch_order(len(train_ds), cfg.batch_size, cfg.seed, epoch)
            for b, batch in _batches(train_ds, order, start, rank, world, collate):
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, cfg)
                try:
                    loss, logs = ddp(_to(batch, device))
                except (ValueError, FloatingPointError) as e:  # non-finite input or loss: skip, never corrupt weights
                    warnings.warn(f"step {step}: skipped a bad batch: {e}", stacklevel=1)
                    meta["skipped"] += 1
                    continue
                opt.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                if not torch.isfinite(norm):
                    warnings.warn(f"step {step}: non-finite gradient, update skipped", stacklevel=1)
                    meta["skipped"] += 1
                    continue
                opt.step()
                step += 1
                seen += cfg.batch_size
                logs = {"loss": loss.item(), **{k: float(v) for k, v in logs.items()}, "lr": lr_at(step - 1, cfg)}
                if writer is not None and step % cfg.log_every == 0:
                    for k, v in logs.items():
                        writer.add_scalar(f"train/{k}", v, step)
                    writer.add_scalar("train/samples_per_s", seen / max(time.time() - t0, 1e-9), step)
                bar.update(task, completed=step, info=f"loss {logs['loss']:.4f}")
                if val_ds is not None and len(val_ds) >= cfg.batch_size and step % cfg.eval_every == 0 and rank == 0:
                    val = evaluate(model, val_ds, collate, cfg, device)
                    logs.update({f"val_{k}": v for k, v in val.items()})
                    for k, v in val.items():
                        writer.add_scalar(f"val/{k}", v, step)
                done = step >= cfg.max_steps
                if rank == 0 and (step % cfg.save_every == 0 or done):
                    rate = seen / max(time.time() - t0, 1e-9)  # this process's: a run started again reports it
                    meta.update(step=step, epoch=epoch, batch=b + 1, logs=logs, samples_per_s=rate)
                    save_state(out, model, opt, meta)
                    if on_save is not None:
                        on_save(model, out)
                if done:
                    break
            else:
                epoch, start = epoch + 1, 0
                continue
            break
    if writer is not None:
        writer.close()
    if world > 1:  # no rank returns before rank 0 has saved; a group torn down under a busy peer aborts gloo
        dist.barrier()
        if owns_group:
            dist.destroy_process_group()
    rate = seen / max(time.time() - t0, 1e-9) if seen else meta.get("samples_per_s", 0.0)
    return {**logs, "step": step, "skipped": meta["skipped"], "samples_per_s": rate}
