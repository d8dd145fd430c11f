"""The policy on a Hugging Face decoder (`backbone="hf:..."`): training, generation, checkpoints, offline only.

The backbone-level rules (mask, padding, KV cache) are checked for every backbone in test_backbone.py.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from worlddrive.models import PolicyConfig, WorldDrivePolicy
from worlddrive.models.backbone import make_backbone
from worlddrive.models.policy import BACKBONE_FILE, CHECKPOINT_FILES, CONFIG_FILE

pytestmark = pytest.mark.usefixtures("one_thread")

# a 2-layer Qwen2 narrower than the tiny preset's d_model=64, so the policy also goes through the projections
TINY_QWEN2 = {
    "model_type": "qwen2",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 8,
}


@pytest.fixture
def hf_spec(tmp_path: Path) -> str:
    (tmp_path / "qwen2").mkdir()
    (tmp_path / "qwen2" / "config.json").write_text(json.dumps(TINY_QWEN2))
    return f"hf:{tmp_path / 'qwen2' / 'config.json'}"


def test_forward_shapes_and_every_trainable_weight_gets_a_gradient(make_policy, items: list, hf_spec: str) -> None:
    policy = make_policy(backbone=hf_spec)
    batch = policy.collate(items[:2])
    hidden, layout = policy.encode(batch, reasoning=True)
    assert hidden.shape == (2, len(layout), policy.config.d_model)
    assert policy.predict_trajectory(batch, num_samples=2).shape == (2, 2, 8, 3)
    loss, logs = policy(batch)
    assert logs["action_loss"] > 0 and logs["lang_loss"] > 0
    loss.backward()
    # the decoder's token embedding is unused (we feed inputs_embeds) and frozen; nothing else may be left unused,
    # or DDP would wait for its gradient forever
    frozen = [n for n, p in policy.named_parameters() if not p.requires_grad]
    assert frozen == ["backbone.model.embed_tokens.weight"]
    assert all(p.grad is not None for p in policy.parameters() if p.requires_grad)


def test_overfits_eight_samples(make_policy, overfit, items: list, hf_spec: str) -> None:
    policy = make_policy(backbone=hf_spec, lambda_lang=0.0)
    batch = policy.collate(items)
    losses = overfit(policy, batch, 40)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_cached_generation_equals_uncached_greedy(make_policy, items: list, hf_spec: str) -> None:
    policy = make_policy(backbone=hf_spec).eval()
    batch = policy.collate(items[:3])
    cached = policy.generate_tokens(batch, max_tokens=12)
    assert cached.shape == (3, 12)
    assert torch.equal(cached, policy.generate_tokens(batch, max_tokens=12, use_cache=False))


def test_checkpoint_carries_its_backbone_config(make_policy, items: list, hf_spec: str, tmp_path: Path) -> None:
    policy = make_policy(backbone=hf_spec).eval()
    policy.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted((*CHECKPOINT_FILES, BACKBONE_FILE))
    assert json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())["backbone"] == hf_spec
    Path(hf_spec.removeprefix("hf:")).unlink()  # the checkpoint must not need the config it was built from
    loaded = WorldDrivePolicy.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == policy.config
    batch = policy.collate(items[:2])
    assert torch.equal(policy.predict_trajectory(batch), loaded.predict_trajectory(batch))
    assert torch.equal(policy.generate_tokens(batch, 5), loaded.generate_tokens(batch, 5))
    (tmp_path / "ckpt" / BACKBONE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=BACKBONE_FILE):
        WorldDrivePolicy.from_pretrained(tmp_path / "ckpt")


def test_a_model_name_resolves_offline_or_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("the hf backbone tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    config = PolicyConfig.preset("tiny", backbone="hf:no-such-org/no-such-model")
    with pytest.raises(FileNotFoundError, match=r"no-such-org/no-such-model.*nothing is downloaded.*hf:PATH"):
        make_backbone(config)
