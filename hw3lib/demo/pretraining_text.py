"""The demo CLIP's pretraining text: the world's scene descriptions inside framings at fixed, recorded
frequencies, the way web alt-text wraps what it shows in "a photo of ...", "this is ...", or rarer
phrasings.

Real CLIP's zero-shot accuracy follows how often a concept or a phrasing occurs in its pretraining text
(Udandarao et al. 2024; Parashar et al. 2024), and it ignores "not" because negation is rare there (0.70%
of LAION-400M captions carry a negation word; Park et al. 2025). Here the text is known exactly: each
training image is drawn in a render style (`styles`), and its caption is a P2 description
(`demo.make_captions`) put into a framing that, as in alt-text, goes with the image's look most of the
time (`styles.MATCHED_SHARE`: "a sketch of ..." under sketches) and is otherwise drawn freely with the
probabilities below. `PretrainingText` records what was drawn, style by framing. P2's captions (the
captioner's references) stay bare. No framing holds a negation word, so the demo CLIP, like real CLIP,
never reads one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ..core.errors import HW3Error
from .styles import MATCHED_SHARE, STYLE_FRAMINGS, STYLES

# (framing, probability): "{}" is the scene description. Common framings first, then rare ones; several
# are the words of OpenAI's ImageNet templates ("a bright photo of", "art of", "itap of").
FRAMINGS: tuple[tuple[str, float], ...] = (
    ("{}", 0.402),
    ("a photo of {}", 0.20),
    ("an image of {}", 0.12),
    ("this is {}", 0.08),
    ("a drawing of {}", 0.06),
    ("a rendering of {}", 0.04),
    ("a close-up photo of {}", 0.03),
    ("a cropped photo of {}", 0.02),
    ("a bright photo of {}", 0.015),
    ("a dark photo of {}", 0.01),
    ("a blurry photo of {}", 0.008),
    ("art of {}", 0.005),
    ("a sketch of {}", 0.004),
    ("a painting of {}", 0.003),
    ("itap of {}", 0.002),
    ("a low resolution photo of {}", 0.001),
)
# framings of OpenAI's templates that never occur in the text: the zero-frequency end of the study
UNSEEN_FRAMINGS: tuple[str, ...] = ("a tattoo of {}", "a sculpture of {}", "a plushie {}", "a toy {}",
                                    "the origami {}")
WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    """Lower-case words (letters only): what the frequency counts count."""
    return WORD.findall(text.lower())


def frame(description: str, framing: str) -> str:
    return framing.replace("{}", description)


def draw_framings(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) indices into FRAMINGS, drawn with their probabilities."""
    p = np.array([q for _, q in FRAMINGS])
    return rng.choice(len(FRAMINGS), size=n, p=p / p.sum())


def framings_for_styles(rng: np.random.Generator, styles: np.ndarray, matched: float = MATCHED_SHARE) -> np.ndarray:
    """(n,) indices into FRAMINGS, one per caption of an image in style `styles[i]` (indices into
    STYLES): the style's own framing with probability `matched`, else a free draw (`draw_framings`)."""
    own = np.array([[f for f, _ in FRAMINGS].index(STYLE_FRAMINGS[s]) for s in STYLES])[np.asarray(styles)]
    free = draw_framings(rng, len(own))
    return np.where(rng.random(len(own)) < matched, own, free)


@dataclass
class PretrainingText:
    """What the demo CLIP read: how often each framing was drawn under each image style, and every
    word's count."""

    framings: list[str]  # FRAMINGS' texts, in order
    probabilities: list[float]  # their probabilities in a free draw
    counts: list[int]  # how many training captions each framing wrapped
    word_counts: dict[str, int]  # word -> occurrences in all training captions
    captions: int  # training captions in all
    styles: list[str]  # image styles (styles.STYLES), in order
    style_framing: list[list[int]]  # (styles, framings): captions of images in each style, by framing

    @classmethod
    def start(cls) -> PretrainingText:
        return cls([f for f, _ in FRAMINGS], [p for _, p in FRAMINGS], [0] * len(FRAMINGS), {}, 0,
                   list(STYLES), [[0] * len(FRAMINGS) for _ in STYLES])

    def add(self, text: str, framing: int, style: int) -> None:
        """One training caption `text`, framed by FRAMINGS[framing], under an image in STYLES[style]."""
        self.counts[framing] += 1
        self.style_framing[style][framing] += 1
        self.captions += 1
        for w in words(text):
            self.word_counts[w] = self.word_counts.get(w, 0) + 1

    def matched_share(self) -> float:
        """Share of captions framed by their image's own style framing (styles.STYLE_FRAMINGS)."""
        own = sum(self.style_framing[i][self.framings.index(STYLE_FRAMINGS[s])] for i, s in enumerate(self.styles)
                  if STYLE_FRAMINGS.get(s) in self.framings)
        return own / self.captions if self.captions else 0.0

    def word_styles(self, template: str) -> dict[str, list[float]]:
        """For each framing word of `template` (its `{object}` left out): the share of that word's
        occurrences in the framings of the text that fell under each style (`styles` order); words no
        framing holds are left out (description words occur under every style alike)."""
        out = {}
        for w in dict.fromkeys(words(template.replace("{object}", " "))):
            per = np.array([sum(row[j] * words(f).count(w) for j, f in enumerate(self.framings))
                            for row in self.style_framing], dtype=np.float64)
            if per.sum() > 0:
                out[w] = (per / per.sum()).round(4).tolist()
        return out

    def frequency(self, framing: str) -> float:
        """Share of training captions in this framing (0 for one never drawn or not in the table)."""
        if framing not in self.framings or not self.captions:
            return 0.0
        return self.counts[self.framings.index(framing)] / self.captions

    def word_frequency(self, template: str) -> float:
        """Mean over a template's words (its `{object}` left out) of log10(1 + the word's count per
        million words): 0 for a template made only of unseen words."""
        ws = words(template.replace("{object}", " "))
        if not ws:
            return 0.0
        total = max(1, sum(self.word_counts.values()))
        return float(np.mean([math.log10(1 + 1e6 * self.word_counts.get(w, 0) / total) for w in ws]))

    def unseen_words(self, template: str) -> list[str]:
        return [w for w in words(template.replace("{object}", " ")) if w not in self.word_counts]

    def to_json(self) -> dict:
        return {"framings": [{"framing": f, "probability": p, "count": c}
                             for f, p, c in zip(self.framings, self.probabilities, self.counts, strict=True)],
                "captions": self.captions, "word_counts": dict(sorted(self.word_counts.items())),
                "styles": self.styles, "style_framing": self.style_framing}

    @classmethod
    def from_json(cls, raw, where: str) -> PretrainingText:
        """Checked: every count a non-negative int, the framing counts summing to `captions`, the style x
        framing table (styles x framings) summing to the framing counts."""
        try:
            rows, captions, wc = raw["framings"], raw["captions"], raw["word_counts"]
            framings = [str(r["framing"]) for r in rows]
            probabilities = [float(r["probability"]) for r in rows]
            counts = [r["count"] for r in rows]
            styles, table = [str(s) for s in raw["styles"]], raw["style_framing"]
            cells = [c for row in table for c in row]
        except (KeyError, TypeError, ValueError) as e:
            raise HW3Error(f"{where}: not a pretraining-text record ({type(e).__name__}: {e})") from None
        ints = [*counts, captions, *cells, *(wc.values() if isinstance(wc, dict) else [None])]
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in ints):
            raise HW3Error(f"{where}: counts must be non-negative integers")
        if sum(counts) != captions:
            raise HW3Error(f"{where}: framing counts sum to {sum(counts)}, not to captions = {captions}")
        if len(table) != len(styles) or any(len(row) != len(framings) for row in table):
            raise HW3Error(f"{where}: style_framing must be {len(styles)} rows (styles) of {len(framings)} counts")
        if [sum(col) for col in zip(*table, strict=True)] != counts:
            raise HW3Error(f"{where}: style_framing columns do not sum to the framing counts")
        return cls(framings, probabilities, counts, {str(k): v for k, v in wc.items()}, captions, styles,
                   [list(row) for row in table])
