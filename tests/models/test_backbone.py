from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from worlddrive.models import Layout, PolicyConfig, VisionEncoder
from worlddrive.models.backbone import PrefixLM, make_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


CONFIG = PolicyConfig.preset("tiny")
LENGTHS = {"visual": 4, "state": 1, "instruction": 3, "reasoning": 5, "action": 2}
# a 2-layer Llama of the tiny preset's width: rotary positions and grouped-query attention, unlike our blocks
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": CONFIG.d_model,
    "intermediate_size": 2 * CONFIG.d_model,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 8,
}


@pytest.fixture(params=["native", "hf"])
def backbone(request: pytest.FixtureRequest, tmp_path: Path) -> PrefixLM:
    """Every backbone must keep the same rules: the native one and a Hugging Face decoder."""
    spec = "native"
    if request.param == "hf":
        (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
        spec = f"hf:{tmp_path / 'config.json'}"
    torch.manual_seed(0)
    return make_backbone(PolicyConfig.preset("tiny", backbone=spec)).eval()


def segments(B: int = 2, lengths: dict[str, int] = LENGTHS) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {name: torch.randn(B, n, CONFIG.d_model, generator=g) for name, n in lengths.items()}


def test_layout_slices_follow_the_segment_order() -> None:
    layout = Layout.of(LENGTHS)
    assert len(layout) == 15
    assert layout["instruction"] == slice(5, 8) and layout["action"] == slice(13, 15)
    assert Layout.of({"visual": 4, "action": 2})["reasoning"] == slice(4, 4)


def test_attention_mask_rules() -> None:
    layout = Layout.of(LENGTHS)
    m = layout.attention_mask()
    prefix, r, a = slice(0, 8), layout["reasoning"], layout["action"]
    assert m[prefix, prefix].all()  # bidirectional prefix
    assert not m[prefix, 8:].any()  # the prefix never sees reasoning or actions
    assert torch.equal(m[r, r], torch.ones(5, 5, dtype=torch.bool).tril())  # causal reasoning
    assert m[r, prefix].all() and not m[r, a].any()
    assert m[a, prefix].all() and m[a, a].all() and not m[a, r].any()  # actions do not read the reasoning


def test_forward_shapes_and_padding_is_ignored(backbone: PrefixLM) -> None:
    x = segments()
    valid = {"instruction": torch.tensor([[True, True, False], [True, False, False]])}
    hidden, layout = backbone(x, valid)
    assert hidden.shape == (2, 15, CONFIG.d_model) and layout == Layout.of(LENGTHS)
    x["instruction"][0, 2] += 10.0  # a padding token's content must not matter
    x["instruction"][1, 1:] -= 3.0
    hidden2, _ = backbone(x, valid)
    keep = torch.ones(15, dtype=torch.bool)
    keep[layout["instruction"]] = False  # padding positions' own outputs may change
    torch.testing.assert_close(hidden[:, keep], hidden2[:, keep])


def test_batch_padding_does_not_move_a_sample(backbone: PrefixLM) -> None:
    x = segments(B=1)
    padded, layout = backbone(x, {"instruction": torch.tensor([[True, True, False]])})
    trimmed, layout2 = backbone({**x, "instruction": x["instruction"][:, :2]}, {})
    for name in ("reasoning", "action"):  # positions count valid tokens, so the padding column shifts nothing
        torch.testing.assert_close(padded[:, layout[name]], trimmed[:, layout2[name]])


def test_action_hidden_does_not_depend_on_the_reasoning_slot(backbone: PrefixLM) -> None:
    x = segments()
    with_reasoning, layout = backbone(x, {})
    without = {k: v for k, v in x.items() if k != "reasoning"}
    no_reasoning, layout2 = backbone(without, {})
    torch.testing.assert_close(with_reasoning[:, layout["action"]], no_reasoning[:, layout2["action"]])


def test_kv_cache_steps_match_the_full_sequence(backbone: PrefixLM) -> None:
    x = segments()
    full, layout = backbone(x, {})
    prefix = {k: v[:, :2] if k == "reasoning" else v for k, v in x.items() if k != "action"}
    cache = backbone.new_cache()
    first, _ = backbone(prefix, {}, cache)
    steps = [backbone.step(x["reasoning"][:, i : i + 1], torch.ones(2, 8 + i + 1, dtype=torch.bool), cache)
             for i in range(2, 5)]  # fmt: skip
    cached = torch.cat([first[:, -2:], *steps], dim=1)
    torch.testing.assert_close(cached, full[:, layout["reasoning"]], atol=1e-5, rtol=1e-5)


def test_vision_tokens_and_resizing() -> None:
    vision = VisionEncoder(CONFIG)
    camera = torch.randint(0, 256, (2, CONFIG.past_frames + 1, 3, 128, 256), dtype=torch.uint8)
    tokens = vision(camera)
    assert tokens.shape == (2, CONFIG.visual_tokens, CONFIG.d_model)
    assert vision(camera[..., ::4, ::4]).shape == tokens.shape  # any frame size is resized to image_size
    try:
        vision(camera[:, 1:])
    except ValueError as e:
        assert "past_frames + 1 = 3" in str(e)
    else:
        raise AssertionError("a wrong number of frames must raise")
