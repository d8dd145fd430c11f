"""The transformer shared by every head, its blocks (also used by the vision encoder and the action experts) and the
named layout of its token sequence.

Sequence layout (openpilot style: named slices, see `Layout`):

    [ visual | state | instruction | reasoning | action ]
      Nv       1       Ni            Nr          Na

Attention (a prefix-LM, as in pi0 / PaliGemma):
- visual, state and instruction form a bidirectional prefix: every token sees the whole prefix;
- reasoning is causal: each token sees the prefix and the reasoning tokens before it (next-token loss);
- action queries see the prefix and each other, but NOT the reasoning.
Why the action queries do not read the reasoning: at training the reasoning is teacher-forced ground truth written
from the privileged true state (pedestrian intentions, who has priority), which the action expert would learn to
copy, while at inference it would read its own, possibly wrong, generated text (exposure bias). Without that edge
train and inference see exactly the same inputs, the reasoning still shapes the shared representation through the
language loss, and the fast path drives without generating a single word: a sequence without the reasoning slot
gives the action queries bit-for-bit the same inputs (each segment carries its own position embedding, so dropping
a slot moves nothing). Padding tokens are masked out as keys.

`PrefixLM` holds these rules once; `Backbone` runs our own blocks on them, `hf_backbone.HFBackbone` a Hugging Face
decoder (`make_backbone` picks by `PolicyConfig.backbone`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worlddrive.models.config import PolicyConfig

SEGMENTS = ("visual", "state", "instruction", "reasoning", "action")
PREFIX = ("visual", "state", "instruction")


@dataclass
class KVCache:
    """Keys and values of one attention layer for every token seen so far (generation)."""

    k: torch.Tensor | None = None  # (B, H, T, hd)
    v: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None = None) -> torch.Tensor:
        """x (B, T, C); mask bool (B or 1, 1, T, T_keys), True where a query may attend; None: attend to all."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)  # (B, H, T, hd)
        if cache is not None:
            k, v = cache.extend(k, v)  # (B, H, T_keys, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, hd)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class Block(nn.Module):
    """Pre-norm transformer block (nanoGPT). Dropout acts on the residual branches only: dropping attention
    probabilities would force SDPA off its fused CPU kernel onto the slow reference path."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, dropout)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache)
        return x + self.mlp(self.ln_2(x))


@dataclass(frozen=True)
class Layout:
    """Where each segment sits in the backbone sequence; absent segments have empty slices."""

    slices: dict[str, slice]

    @classmethod
    def of(cls, lengths: dict[str, int]) -> Layout:
        unknown = set(lengths) - set(SEGMENTS)
        if unknown:
            raise KeyError(f"unknown segments {sorted(unknown)}; known: {SEGMENTS}")
        slices, start = {}, 0
        for name in SEGMENTS:
            slices[name] = slice(start, start + lengths.get(name, 0))
            start += lengths.get(name, 0)
        return cls(slices)

    def __getitem__(self, name: str) -> slice:
        return self.slices[name]

    def __len__(self) -> int:
        return self.slices[SEGMENTS[-1]].stop

    def attention_mask(self, device: torch.device | None = None) -> torch.Tensor:
        """(L, L) bool, True where a query (row) may attend to a key (column); the rules in the module docstring."""
        L = len(self)
        mask = torch.zeros(L, L, dtype=torch.bool, device=device)
        mask[:, : self[PREFIX[-1]].stop] = True
        r, a = self["reasoning"], self["action"]
        n = r.stop - r.start
        mask[r, r] = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        mask[a, a] = True
        return mask


class PrefixLM(nn.Module):
    """The sequence every backbone runs: segments joined in layout order, the attention rules above, and token
    positions; subclasses run their layers in `_run` and hold generation state in the object `new_cache` returns.

    Positions count valid tokens only, and the action queries sit right after the prefix, at the positions the
    reasoning also takes (they never see each other): a backbone with rotary or learned positions then gives the
    action queries the same inputs with or without the reasoning slot, and whatever the batch's padding.
    """

    def forward(
        self, segments: dict[str, torch.Tensor], key_valid: dict[str, torch.Tensor], cache: Any = None
    ) -> tuple[torch.Tensor, Layout]:
        """segments: name -> (B, n, D); key_valid: name -> (B, n) bool, False on padding (all True if absent).

        Returns hidden (B, L, D) and the layout of L. With `cache` (from `new_cache`), keys and values are kept so
        that `step` can append tokens.
        """
        layout = Layout.of({name: x.shape[1] for name, x in segments.items()})
        present = [name for name in SEGMENTS if name in segments]
        x = torch.cat([segments[name] for name in present], dim=1)  # (B, L, D)
        valid = torch.cat(
            [
                key_valid[name] if name in key_valid else x.new_ones(segments[name].shape[:2], dtype=torch.bool)
                for name in present
            ],
            dim=1,
        )  # (B, L)
        mask = layout.attention_mask(x.device)[None, None] & valid[:, None, None, :]  # (B, 1, L, L)
        positions = valid.long().cumsum(1) - 1  # (B, L)
        a = layout["action"]
        n_prefix = valid[:, : layout[PREFIX[-1]].stop].sum(1, keepdim=True)  # (B, 1)
        positions[:, a] = n_prefix + torch.arange(a.stop - a.start, device=x.device)
        return self._run(x, mask, positions, cache), layout

    def step(self, x: torch.Tensor, key_valid: torch.Tensor, cache: Any) -> torch.Tensor:
        """Append tokens x (B, T, D) that may see every cached token (key_valid (B, T_cached + T)) and each other
        causally: the next reasoning tokens of a generation. Returns their hidden states (B, T, D)."""
        T = x.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        mask = key_valid[:, None, None, :].repeat(1, 1, T, 1)  # (B, 1, T, T_keys)
        mask[..., -T:] &= causal
        positions = key_valid.long().cumsum(1)[:, -T:] - 1  # (B, T)
        return self._run(x, mask, positions, cache)

    def new_cache(self) -> Any:
        raise NotImplementedError

    def _run(self, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """x (B, T, D), mask bool (B, 1, T, T_keys), positions (B, T) long -> hidden (B, T, D)."""
        raise NotImplementedError


class Backbone(PrefixLM):
    """Our own pre-norm blocks; they use no positions (each segment embeds its own)."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(config.d_model, config.n_heads, config.dropout) for _ in range(config.n_layers)
        )
        self.ln_f = nn.LayerNorm(config.d_model)

    def new_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.blocks]

    def _run(
        self, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: list[KVCache] | None
    ) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, mask, None if cache is None else cache[i])
        return self.ln_f(x)


def make_backbone(config: PolicyConfig, hf_config: str | Path | None = None) -> PrefixLM:
    """The backbone `config.backbone` names. `hf_config`: a config.json to build an hf backbone from instead of the
    one the name points to (a checkpoint's own copy)."""
    if config.hf_source is None:
        return Backbone(config)
    from worlddrive.models.hf_backbone import HFBackbone  # imports transformers (seconds) only when asked for

    return HFBackbone(config, hf_config or config.hf_source)
