"""Shared by tests/models and tests/eval: a real (if small) dataset made once per session, a tokenizer fitted on it,
and tiny policies built on both."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from worlddrive.data.dataset import WorldDriveDataset
from worlddrive.data.generate import generate
from worlddrive.models import PolicyConfig, TextTokenizer, WorldDrivePolicy, corpus, train_tokenizer


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread, and two threads on a busy 2-core machine slow every op 10x. Modules opt
    in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real crosswalk episode (about 40 samples, 1 s to make)."""
    out = tmp_path_factory.mktemp("policy_data")
    generate(["crosswalk"], 1, 0, out, progress=False)
    return out


@pytest.fixture(scope="session")
def split_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real crosswalk episodes: seed 24 falls in the train split, seed 25 in val."""
    out = tmp_path_factory.mktemp("split_data")
    generate(["crosswalk"], 2, 24, out, progress=False)
    return out


@pytest.fixture(scope="session")
def dataset(dataset_dir: Path) -> WorldDriveDataset:
    return WorldDriveDataset(dataset_dir, "all")


@pytest.fixture(scope="session")
def tokenizer(dataset_dir: Path) -> TextTokenizer:
    return train_tokenizer(corpus(dataset_dir), PolicyConfig.preset("tiny").vocab_size)


@pytest.fixture(scope="session")
def items(dataset: WorldDriveDataset) -> list[dict[str, Any]]:
    """8 samples spread over the episode."""
    step = len(dataset) // 8
    return [dataset[i * step] for i in range(8)]


@pytest.fixture
def make_policy(tokenizer: TextTokenizer, dataset: WorldDriveDataset) -> Callable[..., WorldDrivePolicy]:
    """policy(world_model=None, **PolicyConfig overrides of the tiny preset), seeded."""

    def make(world_model: torch.nn.Module | None = None, **overrides: Any) -> WorldDrivePolicy:
        torch.manual_seed(0)
        return WorldDrivePolicy(PolicyConfig.preset("tiny", **overrides), tokenizer, dataset.stats, world_model)

    return make


def _overfit(policy: WorldDrivePolicy, batch: dict[str, Any], steps: int, log: str = "action_loss") -> list[float]:
    """Train on one batch (AdamW, lr 3e-3, no weight decay) and return the logged `log` term per step."""
    optimizer = policy.configure_optimizers(weight_decay=0.0, lr=3e-3)
    losses = []
    for _ in range(steps):
        loss, logs = policy(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(logs[log])
    return losses


@pytest.fixture
def overfit() -> Callable[..., list[float]]:
    """overfit(policy, batch, steps, log="action_loss") -> the logged loss per step."""
    return _overfit
