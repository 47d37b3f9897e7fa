"""Caption metrics as the course's evaluator computes them, plus a Java-free path.

- CIDEr-D: pycocoevalcap's `Cider` (n=4, sigma=6, document frequencies from the evaluated references,
  x10) after the Stanford PTB tokenizer (Java; lower-cases, strips punctuation). The tokenizer runs in
  a temporary folder (pycocoevalcap's own wrapper writes into its package folder). `python` is a
  Java-free re-implementation of PTB's rules for the cases captions contain. Tests check that both give
  the same tokens on 50 hard strings (abbreviations, months and initials, gonna/wanna/gotta/lemme/gimme,
  'tis, y'all, rock'n'roll, '90s, web addresses, hashtags, emoticons, contractions, numbers, brackets),
  on English and demo captions, and the same CIDEr. Known differences that remain (rules not
  re-implemented): PTB's full abbreviation list (only the common ones here), web addresses whose
  top-level domain is not com/org/net/edu/gov, PTB's Unicode normalisation of quotes, dashes and
  ellipses, and emoticons other than :) :( ;) ;( with or without a nose.
- CLIPScore: 2.5 * max(cos(image, caption), 0) with the manifest's CLIP and its own preprocessing;
  optional "A photo depicts" prefix; captions longer than the text context are truncated with a
  warning. RefCLIPScore: harmonic mean of CLIPScore and the best caption-reference cosine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import HW3Error
from ..models.clip import MAX_TEXT_CHARS, FrozenClipFeatures

PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}


# ----------------------------------------------------------------------------------------------
# tokenisation


def _jar() -> Path:
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    return Path(ptb.__file__).parent / ptb.STANFORD_CORENLP_3_4_1_JAR


_LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def one_line(caption: str) -> str:
    """Every character that Python or Java may read as a line break becomes a space, so that each
    caption stays one line of the tokenizer's input (captions are aligned with images by line)."""
    return _LINE_BREAKS.sub(" ", caption)


def ptb_tokenize(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    """Stanford PTB tokenisation exactly as pycocoevalcap does it (Java), run in a temporary folder."""
    java = shutil.which("java")
    if java is None:
        raise HW3Error("java not found: the PTB tokenizer needs a Java runtime (install openjdk, or use "
                       "--tokenizer python for the Java-free tokenizer)")
    out: dict[str, list[str]] = {k: [""] * len(v) for k, v in captions.items()}
    # an empty caption (a captioner may emit the end token first) is valid and tokenizes to nothing; the
    # Java tokenizer would drop its line, so only the others are sent
    todo = [(k, i, one_line(c)) for k, v in captions.items() for i, c in enumerate(v) if one_line(c).strip()]
    if not todo:
        return out
    keys = [(k, i) for k, i, _ in todo]
    sentences = "\n".join(c for _, _, c in todo)
    with tempfile.TemporaryDirectory(prefix="hw3-ptb-") as tmp:
        src = Path(tmp) / "captions.txt"
        src.write_text(sentences, encoding="utf-8")
        proc = subprocess.run([java, "-cp", str(_jar()), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                               "-lowerCase", str(src)], capture_output=True, cwd=tmp, check=False)
    if proc.returncode != 0:
        raise HW3Error(f"PTB tokenizer failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
    lines = proc.stdout.decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != len(keys):  # one line out per caption in, or every later caption would shift
        raise HW3Error(f"PTB tokenizer returned {len(lines)} lines for {len(keys)} captions")
    for (k, i), line in zip(keys, lines, strict=True):
        out[k][i] = " ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)
    return out


# Java-free PTB tokenisation: the rules of Stanford's PTBTokenizer that matter for captions.
# Splits PTB makes inside words: gonna -> gon na, 'tis -> 't is, y'all -> y' all, rock'n'roll -> rock 'n' roll.
_SPLITS = re.compile(r"(?i)\b(gon|wan|got|lem|gim)(na|ta|me)\b|(?<![\w'])('t)(is|was)\b|\b(y')(all)\b|(\w)('n')(\w)")
_SPLIT_OK = {("gon", "na"), ("wan", "na"), ("got", "ta"), ("lem", "me"), ("gim", "me")}
_CONTRACTIONS = re.compile(r"(?i)\b(can)(not)\b|\b(ca|wo|sha)(n't)\b|(\w)(n't)\b|(\w)('(?:s|re|ve|ll|d|m))\b")
_MONTHS = "jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
_TOKEN = re.compile(
    r"""
    (?:https?://|www\.)[\w./?=&%~+-]*[\w/]  # web addresses
  | [\w-]+(?:\.[\w-]+)*\.(?:com|org|net|edu|gov)\b
  | [\w.+-]+@[\w-]+(?:\.[\w-]+)+  # e-mail addresses
  | \d+(?:[.,:/]\d+)+            # numbers: 3.5  1,000  10:30  1/2
  | \b(?:mr|mrs|ms|dr|st|jr|sr|prof|etc|vs|inc|ltd|co|corp|mt|ft|ave|ph\.d|""" + _MONTHS + r""")\.  # PTB's abbreviations
  | \b[a-z]\.(?:[a-z]\.)*         # initials and abbreviations: c.  u.s.  a.m.
  | n't | '(?:s|re|ve|ll|d|m)\b  # split-off contractions
  | 'n' | 't\b | y' | '\d\ds?\b   # rock 'n' roll, 'tis, y'all, the '90s
  | \#\w+                        # hashtags
  | [:;]-?[()]                   # emoticons :) ;(
  | [\w&]+(?:[-'/][\w&]+)*       # words, hyphenated words, and/or
  | \.\.\.|--|``|''|[!?]+|[^\w\s]  # punctuation; runs of ! and ? stay together
    """, re.VERBOSE)


# With -lowerCase the escaped brackets come out lower-cased (-lrb-), so the evaluator's punctuation
# filter (upper-case -LRB-) keeps them: a quirk of the course's CIDEr that we reproduce.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}


def _split(m: re.Match) -> str:
    groups = [g for g in m.groups() if g]
    if m.group(1) and (m.group(1).lower(), m.group(2).lower()) not in _SPLIT_OK:
        return m.group(0)  # e.g. "gotme": not one of PTB's splits
    return " ".join(groups)


def _escape_brackets(token: str) -> str:
    if token in _BRACKETS:
        return _BRACKETS[token]
    if token[:1] in ":;" and token[-1:] in "()":  # emoticon: the bracket is escaped inside the token
        return token[:-1] + _BRACKETS[token[-1]]
    return token


def simple_ptb_tokenize_one(text: str) -> str:
    s = one_line(text).lower()
    s = s.replace('"', " '' ")
    s = _SPLITS.sub(_split, s)
    s = _CONTRACTIONS.sub(lambda m: " ".join(g for g in m.groups() if g), s)
    tokens = [_escape_brackets(t) for t in _TOKEN.findall(s)]
    return " ".join(t for t in tokens if t not in PUNCTUATIONS)


def simple_ptb_tokenize(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    return {k: [simple_ptb_tokenize_one(c) for c in v] for k, v in captions.items()}


def tokenize(captions: dict[str, list[str]], tokenizer: str = "ptb") -> dict[str, list[str]]:
    if tokenizer == "ptb":
        return ptb_tokenize(captions)
    if tokenizer == "python":
        return simple_ptb_tokenize(captions)
    raise HW3Error(f"unknown tokenizer {tokenizer!r} (ptb or python)")


# ----------------------------------------------------------------------------------------------
# CIDEr-D


def cider(predictions: dict[str, str], references: dict[str, list[str]], tokenizer: str = "ptb"
          ) -> tuple[float, dict[str, float]]:
    """Corpus CIDEr-D (pycocoevalcap) and per-image scores, keys as in `references`."""
    from pycocoevalcap.cider.cider import Cider

    keys = sorted(references)
    toks = tokenize({**{f"r/{k}": references[k] for k in keys}, **{f"p/{k}": [predictions[k]] for k in keys}},
                    tokenizer)
    gts = {k: toks[f"r/{k}"] for k in keys}
    res = {k: toks[f"p/{k}"] for k in keys}
    score, per = Cider().compute_score(gts, res)
    return float(score), {k: float(s) for k, s in zip(keys, per, strict=True)}


# ----------------------------------------------------------------------------------------------
# CLIPScore


@dataclass
class ClipScores:
    clipscore: np.ndarray  # per image, 2.5 * max(cos, 0)
    refclipscore: np.ndarray | None  # per image, harmonic mean with the reference similarity


def warn_if_cut(text: str, name: str) -> str:
    """`text` as CLIP reads it (`clip_tokens` keeps MAX_TEXT_CHARS characters), with a warning naming the image
    when it is cut."""
    if len(text) > MAX_TEXT_CHARS:
        warnings.warn(f"{name}: a caption of {len(text):,} characters is cut to {MAX_TEXT_CHARS:,} for CLIPScore "
                      "(CLIP reads 77 tokens)", stacklevel=2)
    return text


def clip_scores(clip, paths: list[Path], captions: list[str], references: list[list[str]] | None = None,
                prefix: str = "", device="cpu", batch_size: int = 64, w: float = 2.5) -> ClipScores:
    """CLIPScore (and RefCLIPScore with `references`) of each image's caption. `clip` is a `ClipBundle`, or
    a `FrozenClipFeatures` that encodes images and texts it has seen before only once."""
    feats = clip if isinstance(clip, FrozenClipFeatures) else FrozenClipFeatures(clip)
    img = feats.images(paths, batch_size, device, desc="CLIP images")
    names = [Path(p).name for p in paths]
    txt = feats.texts([warn_if_cut(prefix + c, n) for c, n in zip(captions, names, strict=True)], device, trim=False)
    cs = w * np.clip((img * txt).sum(-1).numpy(), 0, None)
    ref = None
    if references is not None:
        flat = [warn_if_cut(prefix + r, f"{n} (reference)") for n, refs in zip(names, references, strict=True)
                for r in refs]
        rf = feats.texts(flat, device, trim=False)
        best, i = [], 0
        for b, refs in enumerate(references):
            best.append(float((rf[i:i + len(refs)] @ txt[b]).max()))
            i += len(refs)
        best = np.clip(np.array(best), 0, None)
        with np.errstate(invalid="ignore", divide="ignore"):
            ref = np.where(cs + best > 0, 2 * cs * best / (cs + best), 0.0)
    return ClipScores(cs, ref)


# ----------------------------------------------------------------------------------------------
# the evaluator


@dataclass(frozen=True)
class ImageScores:
    """One caption's scores."""
    caption: str
    CIDEr: float
    CLIPScore: float | None = None  # None: scored without a CLIP
    RefCLIPScore: float | None = None


@dataclass(frozen=True)
class CaptionScores:
    """The course evaluator's numbers for a set of captions (`evaluate`)."""
    CIDEr: float  # CIDEr-D over the set
    per_image: dict[str, ImageScores]  # image key -> its caption's scores
    CLIPScore: float | None = None  # means over images; None without a CLIP
    RefCLIPScore: float | None = None

    def to_json(self, chair=None) -> dict:
        """`hw3 evaluate`'s per-image file: the scores a CLIP gave only where one did, and a `metrics.chair.Chair`'s
        numbers (overall and per image) when given."""
        def present(d: dict) -> dict:
            return {k: v for k, v in d.items() if v is not None}

        out = present({"CIDEr": self.CIDEr, "CLIPScore": self.CLIPScore, "RefCLIPScore": self.RefCLIPScore})
        out["per_image"] = {k: present(vars(v).copy()) for k, v in self.per_image.items()}
        if chair is not None:
            out["CHAIR"] = chair.to_json()
            for key, c in chair.per_image.items():
                out["per_image"].setdefault(key, {})["CHAIR"] = c.to_json()
        return out


def evaluate(predictions: dict[str, str], caption_set, clip=None, tokenizer: str = "ptb", prefix: str = "",
             device="cpu") -> CaptionScores:
    """The course evaluator's numbers for predictions over a CaptionSet (keys must match exactly)."""
    from ..core.data import check_prediction_keys

    refs = caption_set.references()
    check_prediction_keys(predictions, refs.keys(), "predictions")
    empty = [k for k, v in refs.items() if not v]
    if empty:
        raise HW3Error(f"{caption_set.source}: {len(empty)} image(s) have no reference caption (e.g. {empty[0]})")
    score, per_cider = cider(predictions, refs, tokenizer)
    if clip is None:
        return CaptionScores(score, {k: ImageScores(predictions[k], per_cider[k]) for k in refs})
    keys = [im.key for im in caption_set.images]
    paths = [im.path for im in caption_set.images]
    if any(p is None for p in paths):
        raise HW3Error("CLIPScore needs the image folder (--images)")
    cs = clip_scores(clip, paths, [predictions[k] for k in keys], [refs[k] for k in keys], prefix, device)
    by_key = {k: (float(a), float(b)) for k, a, b in zip(keys, cs.clipscore, cs.refclipscore, strict=True)}
    return CaptionScores(score, {k: ImageScores(predictions[k], per_cider[k], *by_key[k]) for k in refs},
                         float(cs.clipscore.mean()), float(cs.refclipscore.mean()))


def java_available() -> bool:
    return shutil.which("java") is not None and os.path.isfile(_jar())
