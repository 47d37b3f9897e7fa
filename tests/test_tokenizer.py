"""GPT-2 byte-level BPE: parity with OpenAI's reference algorithm on the real files, round trips,
load-time checks, and training a small BPE in the same format."""

import json
from functools import lru_cache

import pytest
import regex

from hw3lib.core.errors import HW3Error
from hw3lib.core.tokenizer import EOT, load_gpt2_tokenizer, train_bpe

CAPTIONS = [
    "A man riding a bike down a dirt road.",
    "a woman   holding an umbrella  over a man",
    "Two dogs' toys: they're 3.5 inches, and it's 100% fun!",
    "naïve café façade – ÜBER résumé 東京 🚲🐑",
    "line one\nline two\n\n  trailing spaces   ",
    "I'll we've you'd she's they'RE 2024-11-27 #hashtag @user",
    "",
    " leading space",
    "tabs\tand\r\nwindows newlines",
    "<|endoftext|> inside text is just text",
]


# OpenAI's gpt-2 encoder.py algorithm, re-stated as an independent reference
def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


class ReferenceEncoder:
    PAT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

    def __init__(self, encoder, merges):
        self.encoder = encoder
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = _bytes_to_unicode()
        self.bpe = lru_cache(maxsize=None)(self._bpe)

    def _bpe(self, token):
        word = tuple(token)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            new, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    new.append(word[i] + word[i + 1])
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
        return word

    def encode(self, text):
        out = []
        for tok in regex.findall(self.PAT, text):
            tok = "".join(self.byte_encoder[b] for b in tok.encode("utf-8"))
            out.extend(self.encoder[t] for t in self.bpe(tok))
        return out


@pytest.fixture(scope="module")
def real(gpt2_files):
    return load_gpt2_tokenizer(*gpt2_files, expected_vocab_size=50257)


@pytest.fixture(scope="module")
def reference(gpt2_files):
    enc = json.loads(gpt2_files[0].read_text(encoding="utf-8"))
    lines = gpt2_files[1].read_text(encoding="utf-8").split("\n")[1:]
    return ReferenceEncoder(enc, [tuple(m.split()) for m in lines if m])


def test_real_files_load_with_full_vocabulary(real):
    assert real.vocab_size == 50257 and real.eot_id == 50256 and len(real) == 50257


@pytest.mark.parametrize("text", CAPTIONS)
def test_encode_matches_openai_reference_and_round_trips(real, reference, text):
    ids = real.encode(text)
    assert ids == reference.encode(text)
    assert real.decode(ids) == text


def test_eot_is_start_and_stop(real):
    ids = [real.eot_id] + real.encode("a cat") + [real.eot_id] + real.encode(" junk")
    assert real.decode(ids[1:], stop_at_eot=True) == "a cat"
    assert real.decode([real.eot_id]) == EOT


def test_batch_equals_single(real):
    assert real.encode_batch(CAPTIONS) == [real.encode(t) for t in CAPTIONS]


def test_bad_files(tmp_path, gpt2_files):
    (tmp_path / "enc.json").write_text(json.dumps({"a": 0, "b": 2, EOT: 3}))
    with pytest.raises(HW3Error, match="without gaps"):
        load_gpt2_tokenizer(tmp_path / "enc.json", gpt2_files[1])
    (tmp_path / "enc.json").write_text(json.dumps({"a": 0}))
    with pytest.raises(HW3Error, match="no <\\|endoftext\\|>"):
        load_gpt2_tokenizer(tmp_path / "enc.json", gpt2_files[1])
    (tmp_path / "enc.json").write_text("{}")
    with pytest.raises(HW3Error, match="non-empty"):
        load_gpt2_tokenizer(tmp_path / "enc.json", gpt2_files[1])
    with pytest.raises(HW3Error, match="expected 1000"):
        load_gpt2_tokenizer(*gpt2_files, expected_vocab_size=1000)
    (tmp_path / "m.bpe").write_text("#version: 0.2\na b c\n")
    with pytest.raises(HW3Error, match="line 2 is not a merge"):
        load_gpt2_tokenizer(gpt2_files[0], tmp_path / "m.bpe")


def test_trained_bpe_saves_in_gpt2_format_and_matches_reference(tmp_path):
    texts = ["a large red circle above a small blue square", "two shapes: a green star and a ring"] * 50
    tok = train_bpe(texts, 300)
    assert tok.eot_id == tok.vocab_size - 1 and tok.vocab_size <= 300
    enc_path, bpe_path = tok.save(tmp_path)
    assert bpe_path.read_text().startswith("#version: 0.2\n")
    again = load_gpt2_tokenizer(enc_path, bpe_path)
    ref = ReferenceEncoder(json.loads(enc_path.read_text()),
                           [tuple(m.split()) for m in bpe_path.read_text().split("\n")[1:] if m])
    for t in texts[:2] + ["an unseen purple hexagon 😀"]:
        assert again.encode(t) == tok.encode(t) == ref.encode(t)
        assert again.decode(again.encode(t)) == t
    assert len(tok.encode(texts[0])) < len(texts[0]) / 2  # merges learned: far fewer tokens than bytes
    assert train_bpe(texts, 300).encoder == tok.encoder  # deterministic
