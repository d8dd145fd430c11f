"""`worlddrive bench train`: training throughput of the policy, its FLOPs and model FLOPs utilisation (MFU).

What is timed is the training loop's step (train.py): forward, backward, gradient clipping and AdamW. FLOPs are
counted by torch's `FlopCounterMode` on a real forward + backward (not 3 x forward), plus the CPU flash-attention
kernel, which that counter does not know (it counts no attention at all on CPU). The peak is a large matmul at the
same thread count, best of a few, measured in the same run before and after training; step times are medians, and
fp32 and bf16 steps alternate so that both see the same load. Other work on the cores still slows the steps far more
than the peak (each of torch's many parallel regions waits for a descheduled thread), so `load` is reported too.

Without a dataset the batches are `example_batch` with random camera frames and texts at their full slot length: a
model-only number. With a dataset folder every step also reads and collates its batch in this process, as the
training loop does, and its FLOPs are counted at that batch's text lengths.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from worlddrive.data.record import PAST
from worlddrive.models.config import PolicyConfig
from worlddrive.models.policy import WorldDrivePolicy
from worlddrive.models.text import corpus, train_tokenizer
from worlddrive.train import TrainConfig, batch_order

WARMUP_STEPS = 2  # untimed: the first steps create oneDNN primitives and grow the allocator
MIN_STEPS = 3  # timed steps, however short the budget
PEAK_SIZE = 2048  # square matmul of the peak: 17 GFLOP, large enough for the best kernel, 0.1 s at fp32 here
PEAK_REPEATS = 5


def _attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    """Model FLOPs: the gradients of the two matmuls, not the kernel's recomputation of the scores (which torch's
    formula for the GPU kernels counts, +25 %)."""
    return 2 * sdpa_flop_count(query, key, value)


CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward_flops,
}


def count_step_flops(policy: WorldDrivePolicy, batch: dict[str, Any]) -> float:
    """FLOPs of the forward and backward of one training step on `batch`, attention counted dense (masks ignored)."""
    with torch.random.fork_rng(), FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        loss, _ = policy(batch)
        loss.backward()
    policy.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = PEAK_SIZE, repeats: int = PEAK_REPEATS) -> float:
    """FLOP/s of the best of `repeats` n x n matmuls at the current thread count: what this machine can reach."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def synthetic_policy(config: PolicyConfig) -> WorldDrivePolicy:
    """A policy without a dataset: a tokenizer fitted on the annotation templates, unit trajectory stats."""

    def unit(shape: tuple[int, ...]) -> dict[str, Any]:
        return {"mean": torch.zeros(shape).tolist(), "std": torch.ones(shape).tolist()}

    stats = {"trajectory": unit((config.waypoints, 3)), "past_trajectory": unit((PAST, 3)), "ego_speed": unit(())}
    return WorldDrivePolicy(config, train_tokenizer(corpus(), config.vocab_size), stats)


def _text_lengths(batch: dict[str, Any]) -> tuple[int, int]:
    return batch["instruction_ids"].shape[1], batch["reasoning_ids"].shape[1]


def _flops_at(policy: WorldDrivePolicy, text_lengths: tuple[int, int]) -> float:
    """FLOPs of one sample whose texts have these token lengths; every op is per sample, so a batch costs B times."""
    batch = policy.example_batch(1)
    for name, n in zip(("instruction", "reasoning"), text_lengths, strict=True):
        batch[f"{name}_ids"], batch[f"{name}_mask"] = batch[f"{name}_ids"][:, :n], batch[f"{name}_mask"][:, :n]
    return count_step_flops(policy, batch)


def _synthetic_batches(policy: WorldDrivePolicy, batch_size: int, seed: int) -> Iterator[dict[str, Any]]:
    batch = policy.example_batch(batch_size)
    generator = torch.Generator().manual_seed(seed)
    for key in ("camera", "future_camera"):
        batch[key] = torch.randint(0, 256, batch[key].shape, dtype=torch.uint8, generator=generator)
    return itertools.repeat(batch)


def _dataset_batches(policy: WorldDrivePolicy, dataset, batch_size: int, seed: int) -> Iterator[dict[str, Any]]:
    """The training loop's batches: a seeded shuffle per epoch, read and collated in this process."""
    for epoch in itertools.count():
        for indices in batch_order(len(dataset), batch_size, seed, epoch):
            yield policy.collate([dataset[i] for i in indices])


def _reset_peak_rss() -> None:
    """Hand the heap memory freed by earlier steps back to the OS (glibc) and restart the peak RSS that getrusage
    reports (Linux), so that a precision's peak is its own rather than the one before it (to about 50 MB)."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


@dataclass
class _Timing:
    """One precision's timed steps: seconds spent getting each batch, each whole step, and its text lengths."""

    data_s: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    lengths: list[tuple[int, int]] = field(default_factory=list)


def _peak_rss(
    steps: dict[str, Callable[[dict[str, Any]], None]], batches: Iterator[dict[str, Any]]
) -> dict[str, float]:
    """Run each precision's untimed warm-up steps in turn; its peak RSS (MB) is the peak over its own steps."""
    rss = {}
    for name, step in steps.items():
        _reset_peak_rss()
        for _ in range(WARMUP_STEPS):
            step(next(batches))
        rss[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return rss


def _timed(
    steps: dict[str, Callable[[dict[str, Any]], None]], batches: Iterator[dict[str, Any]], seconds: float
) -> dict[str, _Timing]:
    """One step of each precision in turn until `seconds` have passed (at least MIN_STEPS each), so that all of them
    see the same load of this shared machine."""
    timings = {name: _Timing() for name in steps}
    start = time.perf_counter()
    while min(len(t.step_s) for t in timings.values()) < MIN_STEPS or time.perf_counter() - start < seconds:
        for name, step in steps.items():
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            step(batch)
            timings[name].data_s.append(t1 - t0)
            timings[name].step_s.append(time.perf_counter() - t0)
            timings[name].lengths.append(_text_lengths(batch))
    return timings


def bench_train(
    config: str = "small",
    batch_size: int = 16,
    seconds: float = 20.0,
    wm_heads: tuple[str, ...] = (),
    bf16: bool = False,
    data: str | Path | None = None,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Training samples/s, counted GFLOP/s, measured matmul peak, MFU and peak RSS, in fp32 and (`bf16`) under
    bfloat16 autocast, whose MFU is against the bfloat16 matmul peak. `seconds`: the timed budget of all steps."""
    if "vq" in wm_heads:
        raise ValueError("bench train supports the frame and bev heads; the vq head needs a trained VQ tokenizer")
    if batch_size <= 0 or seconds < 0:
        raise ValueError(f"batch_size must be positive and seconds >= 0, got {batch_size} and {seconds}")
    if threads is not None:
        torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    torch.manual_seed(seed)
    cfg = PolicyConfig.preset(config, wm_heads=tuple(wm_heads), device="cpu")
    if data is None:
        policy = synthetic_policy(cfg)
        batches = _synthetic_batches(policy, batch_size, seed)
    else:
        from worlddrive.data.dataset import WorldDriveDataset

        dataset = WorldDriveDataset(data, "train", fields=WorldDriveDataset.fields_for(wm_heads))
        if len(dataset) < batch_size:
            raise ValueError(f"{data} has {len(dataset)} training samples, fewer than one batch of {batch_size}")
        policy = WorldDrivePolicy.from_dataset(cfg, dataset)
        batches = _dataset_batches(policy, dataset, batch_size, seed)
    policy.train()
    train_cfg = TrainConfig()
    opt = policy.configure_optimizers(train_cfg.weight_decay, train_cfg.lr)

    def train_step(batch: dict[str, Any], dtype: torch.dtype) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss, _ = policy(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), train_cfg.grad_clip)
        opt.step()

    dtypes = {"": torch.float32, "bf16_": torch.bfloat16} if bf16 else {"": torch.float32}
    steps = {prefix: partial(train_step, dtype=dtype) for prefix, dtype in dtypes.items()}
    peaks = {prefix: matmul_peak(dtype) for prefix, dtype in dtypes.items()}
    rss = _peak_rss(steps, batches)
    timings = _timed(steps, batches, seconds)
    flops = {key: _flops_at(policy, key) for key in {k for t in timings.values() for k in t.lengths}}
    res = {
        "threads": float(torch.get_num_threads()),
        "batch_size": float(batch_size),
        "model_only": float(data is None),
    }
    for prefix, dtype in dtypes.items():
        timing = timings[prefix]
        per_sample = statistics.fmean(flops[key] for key in timing.lengths)
        step_s = statistics.median(timing.step_s)
        peak = max(peaks[prefix], matmul_peak(dtype))
        res[f"{prefix}samples_per_s"] = batch_size / step_s
        res[f"{prefix}step_s"] = step_s
        if data is not None:
            res[f"{prefix}data_frac"] = sum(timing.data_s) / sum(timing.step_s)
        res[f"{prefix}gflop_per_sample"] = per_sample / 1e9
        res[f"{prefix}gflops_per_s"] = per_sample / step_s * batch_size / 1e9
        res[f"{prefix}peak_gflops"] = peak / 1e9
        res[f"{prefix}mfu"] = res[f"{prefix}gflops_per_s"] * 1e9 / peak
        res[f"{prefix}rss_mb"] = rss[prefix]
    if bf16:
        res["bf16_speedup"] = res["bf16_samples_per_s"] / res["samples_per_s"]
    res["load"] = load
    return res
