"""Action experts: the backbone's action-query hidden states -> 8 waypoints (x, y, yaw), in normalised units.

Each waypoint has its own query token, so `h` is (B, W, D) with W = config.waypoints. Targets and outputs are
normalised per waypoint and coordinate with the dataset's trajectory stats (the policy does the (de)normalising).
All experts share one interface, selected by `config.action_expert`:
    loss(h, target (B, W, 3)) -> scalar tensor
    predict(h, num_samples=K, generator=None) -> (B, K, W, 3)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from worlddrive.models.backbone import Block, KVCache
from worlddrive.models.config import PolicyConfig

AR_RANGE = 4.0  # normalised units covered by the autoregressive bins, +-; farther values are clipped


class QueryRegression(nn.Module):
    """One linear read-out per query, MSE or L1 loss (`config.regression_loss`). Deterministic: every one of K
    samples is the same trajectory."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.head = nn.Linear(config.d_model, 3)
        self.criterion = F.mse_loss if config.regression_loss == "mse" else F.l1_loss

    def loss(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.criterion(self.head(h), target)

    def predict(self, h: torch.Tensor, num_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.head(h)[:, None].expand(-1, num_samples, -1, -1)  # (B, K, W, 3)


class FlowMatching(nn.Module):
    """pi0-style rectified flow: a small transformer over the W waypoints predicts the velocity that carries
    Gaussian noise (t = 0) to the trajectory (t = 1); sampling integrates it with `flow_steps` Euler steps.

    Each waypoint token is conditioned by adding its query's hidden state, so the backbone runs once per sample
    however many denoising steps and samples follow. Different noise gives different, multimodal trajectories.
    """

    def __init__(self, config: PolicyConfig):
        super().__init__()
        d = config.d_model
        self.steps = config.flow_steps
        self.inp = nn.Linear(3, d)
        self.time = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(Block(d, config.n_heads, config.dropout) for _ in range(config.action_layers))
        self.ln_f = nn.LayerNorm(d)
        self.out = nn.Linear(d, 3)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """x (B, W, 3) at times t (B,), conditioned on h (B, W, D) -> velocity (B, W, 3)."""
        z = self.inp(x) + h + self.time(_sinusoid(t, h.shape[-1]))[:, None]  # (B, W, D)
        for block in self.blocks:
            z = block(z)
        return self.out(self.ln_f(z))

    def loss(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        noise = torch.randn_like(target)
        t = torch.rand(target.shape[0], device=target.device)
        x_t = (1 - t[:, None, None]) * noise + t[:, None, None] * target
        return F.mse_loss(self.velocity(x_t, t, h), target - noise)

    def predict(self, h: torch.Tensor, num_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        B, W, _ = h.shape
        h = h.repeat_interleave(num_samples, dim=0)  # (B*K, W, D)
        x = torch.randn(B * num_samples, W, 3, generator=generator, device=h.device)
        for i in range(self.steps):
            t = torch.full((B * num_samples,), i / self.steps, device=h.device)
            x = x + self.velocity(x, t, h) / self.steps
        return x.view(B, num_samples, W, 3)


class AutoregressiveTokens(nn.Module):
    """Each of the W x 3 coordinates becomes one of `ar_bins` bins over [-AR_RANGE, AR_RANGE]; a small causal
    transformer predicts them one after the other (x, y, yaw of waypoint 1, then of waypoint 2, ...), cross-entropy.

    Token p is conditioned by adding the hidden state of its waypoint's query. `predict` decodes greedily for one
    sample and draws from the softmax (with `generator`) for several, reusing a KV cache across the W x 3 steps.
    """

    def __init__(self, config: PolicyConfig):
        super().__init__()
        d, self.bins, self.length = config.d_model, config.ar_bins, 3 * config.waypoints
        self.embed = nn.Embedding(self.bins + 1, d)  # the last id starts the sequence
        self.pos = nn.Parameter(0.02 * torch.randn(self.length, d))
        self.blocks = nn.ModuleList(Block(d, config.n_heads, config.dropout) for _ in range(config.action_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, self.bins)

    def tokens(self, values: torch.Tensor) -> torch.Tensor:
        """(B, W, 3) normalised values -> (B, 3W) bin ids."""
        unit = (values.clamp(-AR_RANGE, AR_RANGE) + AR_RANGE) / (2 * AR_RANGE)
        return (unit * self.bins).long().clamp(max=self.bins - 1).flatten(1)

    def values(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 3W) bin ids -> (B, W, 3) bin centres."""
        return ((tokens.float() + 0.5) / self.bins * 2 - 1).mul(AR_RANGE).view(tokens.shape[0], -1, 3)

    def logits(
        self, inputs: torch.Tensor, h: torch.Tensor, start: int = 0, cache: list[KVCache] | None = None
    ) -> torch.Tensor:
        """Previous tokens inputs (B, T) at positions start ... start + T - 1 -> next-token logits (B, T, bins)."""
        T = inputs.shape[1]
        cond = h.repeat_interleave(3, dim=1)[:, start : start + T]  # (B, T, D): the waypoint's query
        x = self.embed(inputs) + self.pos[start : start + T] + cond
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # with a cache, T = 1 sees all before
        for i, block in enumerate(self.blocks):
            x = block(x, mask, None if cache is None else cache[i])
        return self.head(self.ln_f(x))

    def loss(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(target)  # (B, 3W)
        inputs = F.pad(tokens[:, :-1], (1, 0), value=self.bins)  # shifted right behind the start id
        return F.cross_entropy(self.logits(inputs, h).flatten(0, 1), tokens.flatten())

    def predict(self, h: torch.Tensor, num_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        B = h.shape[0]
        h = h.repeat_interleave(num_samples, dim=0)  # (B*K, W, D)
        cache = [KVCache() for _ in self.blocks]
        token = torch.full((B * num_samples, 1), self.bins, dtype=torch.long, device=h.device)
        out = []
        for p in range(self.length):
            logits = self.logits(token, h, start=p, cache=cache)[:, -1]  # (B*K, bins)
            if num_samples == 1:
                token = logits.argmax(-1, keepdim=True)
            else:
                token = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            out.append(token)
        return self.values(torch.cat(out, dim=1)).view(B, num_samples, -1, 3)


EXPERTS: dict[str, type[nn.Module]] = {
    "query": QueryRegression,
    "flow": FlowMatching,
    "ar": AutoregressiveTokens,
}


def make_action_expert(config: PolicyConfig) -> nn.Module:
    return EXPERTS[config.action_expert](config)


def _sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Times t (B,) in [0, 1] -> (B, dim) sine/cosine features over log-spaced frequencies."""
    freqs = torch.exp(-math.log(1000.0) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    angles = 1000.0 * t[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
