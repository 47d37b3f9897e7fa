"""GPT-2 byte-level BPE from the two files users have (`encoder.json` + `vocab.bpe`), and training a
small one in the same format for the demo world.

The BPE itself runs in Hugging Face `tokenizers` (Rust); this module only wires it up the way GPT-2
does (byte-level pre-tokenizer with GPT-2's regex, no prefix space, byte-level decoder) and checks
what it loaded - transformers 5.x can silently build an empty tokenizer from the same files.
`<|endoftext|>` is both the start and the end token; in caption text it is never special.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import HW3Error
from .files import atomic_write_text, read_json

EOT = "<|endoftext|>"


class GPT2BPETokenizer:
    """Encode/decode text with a GPT-2 byte-level BPE vocabulary."""

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]], source: str = "<memory>"):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        if EOT not in encoder:
            raise HW3Error(f"{source}: vocabulary has no {EOT} token")
        ids = sorted(encoder.values())
        if ids != list(range(len(ids))):
            raise HW3Error(f"{source}: token ids are not 0..{len(ids) - 1} without gaps")
        self.encoder = encoder
        self.vocab_size = len(encoder)
        self.eot_id = encoder[EOT]
        bpe = models.BPE(vocab=encoder, merges=merges, fuse_unk=False)
        tok = Tokenizer(bpe)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        self._tok = tok
        if tok.get_vocab_size(with_added_tokens=False) != self.vocab_size:
            raise HW3Error(f"{source}: tokenizer built with {tok.get_vocab_size()} tokens, expected {self.vocab_size}")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def encode_with_offsets(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """(ids, character span of each token in its text) for every text."""
        return [(e.ids, list(e.offsets)) for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], stop_at_eot: bool = False) -> str:
        """Text for `ids`. With `stop_at_eot`, everything from the first end token on is dropped."""
        ids = list(ids)
        if stop_at_eot and self.eot_id in ids:
            ids = ids[: ids.index(self.eot_id)]
        return self._tok.decode(ids, skip_special_tokens=False)

    def id_to_token_text(self, i: int) -> str:
        """The readable text of one token (bytes decoded; `<|endoftext|>` kept)."""
        return self.decode([i])

    def __len__(self) -> int:
        return self.vocab_size

    def save(self, folder: str | os.PathLike) -> tuple[Path, Path]:
        """Write `encoder.json` + `vocab.bpe` in GPT-2's format."""
        folder = Path(folder)
        enc_path, bpe_path = folder / "encoder.json", folder / "vocab.bpe"
        atomic_write_text(enc_path, json.dumps(self.encoder, ensure_ascii=False))
        merges = json.loads(self._tok.to_str())["model"]["merges"]
        lines = [" ".join(m) if isinstance(m, list) else m for m in merges]
        atomic_write_text(bpe_path, "#version: 0.2\n" + "\n".join(lines) + "\n")
        return enc_path, bpe_path


def _read_merges(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise HW3Error(f"{path}: BPE merges file not found")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise HW3Error(f"{path}: not UTF-8 text") from e
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = []
    for n, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise HW3Error(f"{path}: line {n} is not a merge of two symbols: {line[:60]!r}")
        merges.append((parts[0], parts[1]))
    return merges


def load_gpt2_tokenizer(encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike,
                        expected_vocab_size: int | None = None) -> GPT2BPETokenizer:
    """GPT-2's tokenizer from its two files. `expected_vocab_size` (50257 for the real files) is
    asserted when given; the vocabulary is always checked to be non-empty and gap-free."""
    encoder_json, vocab_bpe = Path(encoder_json), Path(vocab_bpe)
    encoder = read_json(encoder_json)
    if not isinstance(encoder, dict) or not encoder:
        raise HW3Error(f"{encoder_json}: expected a non-empty JSON object token -> id")
    if not all(isinstance(v, int) for v in encoder.values()):
        raise HW3Error(f"{encoder_json}: every token id must be an integer")
    merges = _read_merges(vocab_bpe)
    tok = GPT2BPETokenizer(encoder, merges, source=str(encoder_json))
    if expected_vocab_size is not None and tok.vocab_size != expected_vocab_size:
        raise HW3Error(f"{encoder_json}: {tok.vocab_size} tokens, expected {expected_vocab_size}")
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int) -> GPT2BPETokenizer:
    """Train a byte-level BPE of `vocab_size` tokens (256 byte symbols + merges + `<|endoftext|>`
    last, as in GPT-2) on `texts`. Deterministic for the same texts in the same order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(list(texts), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    encoder = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    encoder[EOT] = len(encoder)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return GPT2BPETokenizer(encoder, merges, source="trained BPE")


def teacher_forcing_batch(token_lists: list[list[int]], eot: int, max_len: int):
    """The course's teacher-forcing layout: input [eot, caption..., eot, pad=eot...], target
    [caption..., eot, -100...] (-100 = ignored). Captions longer than max_len - 1 tokens are cut.
    Returns (inputs, targets), each (N, T) long, T = min(max_len, longest caption + 1)."""
    import torch

    T = min(max_len, max(len(t) for t in token_lists) + 1)
    n = len(token_lists)
    inp = torch.full((n, T), eot, dtype=torch.long)
    tgt = torch.full((n, T), -100, dtype=torch.long)
    for i, toks in enumerate(token_lists):
        seq = torch.tensor([eot] + list(toks[: T - 1]) + [eot], dtype=torch.long)
        inp[i, : len(seq) - 1] = seq[:-1]
        tgt[i, : len(seq) - 1] = seq[1:]
    return inp, tgt
