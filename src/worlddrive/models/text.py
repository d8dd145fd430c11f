"""Text tokens for the instruction and the reasoning: a small byte-level BPE fitted on our own corpus.

Why byte-level BPE: decoding gives back the exact text (case, digits, punctuation), which `parse_reasoning` needs
to score generated reasoning, and no input can be out of vocabulary (distances like "130 metres" that the templates
never showed). The corpus is tiny and formulaic, so about 800 symbols already cover every word; a vocab_size above
that just stops early.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from worlddrive.data.annotate import corpus_lines
from worlddrive.data.format import SHARDS, load_info, open_shard

PAD, BOS, EOS, SEP = "<pad>", "<bos>", "<eos>", "<sep>"
SPECIAL_TOKENS = (PAD, BOS, EOS, SEP)  # ids 0, 1, 2, 3
TOKENIZER_FILE = "tokenizer.json"


class TextTokenizer:
    """A `tokenizers.Tokenizer` with our special tokens, and the padding the policy's fixed-length slots need."""

    def __init__(self, tokenizer: Tokenizer):
        ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if ids != list(range(len(SPECIAL_TOKENS))):
            raise ValueError(f"tokenizer must map {SPECIAL_TOKENS} to ids 0..3, got {ids}")
        self.tokenizer = tokenizer
        self.pad_id, self.bos_id, self.eos_id, self.sep_id = ids

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, special tokens dropped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def pad(self, seqs: list[list[int]], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Truncate to `max_length`, right-pad to the longest: ids (B, T) long, mask (B, T) bool, True on tokens.

        Padding only to the batch's longest sequence (not to the slot's maximum) saves most of the text tokens; the
        policy masks padding out, so the width changes nothing else.
        """
        length = min(max_length, max(map(len, seqs), default=0))
        ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        for i, seq in enumerate(seqs):
            seq = seq[:length]
            ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return ids, ids != self.pad_id

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TOKENIZER_FILE
        self.tokenizer.save(str(path))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TextTokenizer:
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} not found")
        return cls(Tokenizer.from_file(str(path)))


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> TextTokenizer:
    """Fit a byte-level BPE of at most `vocab_size` symbols (special tokens included) on `texts`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return TextTokenizer(tokenizer)


def corpus(dataset_root: str | Path | None = None) -> list[str]:
    """Every template of `annotate` plus, given a dataset folder, all its instructions and reasoning texts.

    The texts are read straight from the shards' string arrays, without touching an image.
    """
    texts = list(corpus_lines())
    if dataset_root is not None:
        root = Path(dataset_root)
        for shard in load_info(root)["shards"]:
            group = open_shard(root / SHARDS / shard["name"])
            texts += [str(t) for name in ("instruction", "reasoning") for t in group[name][...]]
    return texts
