"""A Hugging Face `transformers` decoder as the policy's backbone (`PolicyConfig.backbone = "hf:<name or config>"`).

Built from its config alone, with random weights, and never downloaded: a path must hold a config.json, and a model
name is looked up in the local Hugging Face cache only. It runs over the same sequence as the native backbone
(`PrefixLM`): our segments go in as `inputs_embeds`, our prefix-LM mask as an additive 4D mask (transformers passes a
4D mask to the attention as it is, and its eager and SDPA attention both add a float mask to the scores), our
positions as `position_ids` (rotary models rotate by them), and generation keeps keys and values in a
`DynamicCache`. The decoder's own token embedding is never used, so it is frozen: no optimizer step or DDP
all-reduce waits on it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, DynamicCache, PretrainedConfig

from worlddrive.models.backbone import PrefixLM
from worlddrive.models.config import PolicyConfig


def load_hf_config(source: str | Path) -> PretrainedConfig:
    """A local config.json (or a folder holding one), else a model name resolved from the local Hugging Face cache;
    never downloads."""
    if Path(source).exists():
        return AutoConfig.from_pretrained(source)
    try:
        return AutoConfig.from_pretrained(str(source), local_files_only=True)
    except OSError as e:
        raise FileNotFoundError(
            f"hf backbone {str(source)!r} is neither a local config.json nor a model in the local Hugging Face cache, "
            "and nothing is downloaded: pass hf:PATH/TO/config.json (any transformers decoder config, e.g. written by "
            "`transformers.AutoConfig.for_model('llama', ...).save_pretrained(DIR)`), or put the model's config.json "
            "into the Hugging Face cache (HF_HOME) first"
        ) from e


class HFBackbone(PrefixLM):
    """A transformers decoder (Llama, Qwen2, ...) behind the `PrefixLM` interface. Linear maps join d_model and the
    decoder's hidden size when they differ."""

    def __init__(self, config: PolicyConfig, source: str | Path):
        super().__init__()
        self.hf_config = load_hf_config(source)
        if self.hf_config.is_encoder_decoder:
            raise ValueError(f"hf backbone {str(source)!r} is an encoder-decoder; a decoder-only model is needed")
        self.model = AutoModel.from_config(self.hf_config, dtype=torch.float32)
        self.model.get_input_embeddings().requires_grad_(False)
        hidden = self.hf_config.hidden_size
        same = hidden == config.d_model
        self.proj_in = nn.Identity() if same else nn.Linear(config.d_model, hidden)
        self.proj_out = nn.Identity() if same else nn.Linear(hidden, config.d_model)

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.hf_config)

    def _run(
        self, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache | None
    ) -> torch.Tensor:
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, torch.finfo(x.dtype).min)
        out = self.model(
            inputs_embeds=self.proj_in(x),  # (B, T, hidden)
            attention_mask=bias,  # (B, 1, T, T_keys), 0 where a query may attend
            position_ids=positions,  # (B, T)
            past_key_values=cache,
            use_cache=cache is not None,
        )
        return self.proj_out(out.last_hidden_state)  # (B, T, D)
