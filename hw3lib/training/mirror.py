"""Horizontal flips that keep a caption true: the image mirrored, its caption's side words swapped, its
boxes mirrored.

Mirroring an image turns "a star to the left of a circle" false and puts every object's box on the other
side: a flip augmentation that leaves the caption and the boxes as they were teaches the captioner wrong
relations and wrong attention targets. VirTex (Desai & Johnson 2021) and MDETR (Kamath et al. 2021) flip
the image and swap "left" and "right" in its caption; so does this module, with the word pairs a setting
(`[train] flip_swaps`, default "left:right"): each pair's words trade places wherever they stand as whole
words ("top left" -> "top right", "to the left of" -> "to the right of"), their case kept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..core.errors import HW3Error

DEFAULT_SWAPS = ("left:right",)  # VirTex / MDETR: the only words a horizontal flip makes false


def parse_swaps(items: Sequence[str], source: str = "flip_swaps") -> tuple[tuple[str, str], ...]:
    """"word:word" items as pairs; each word at most once in all of them, the two of a pair different."""
    pairs, seen = [], set()
    for item in items:
        m = re.fullmatch(r"\s*([^\W\d_][\w-]*)\s*:\s*([^\W\d_][\w-]*)\s*", item or "")
        if m is None:
            raise HW3Error(f"{source}: {item!r} is not a pair of words as 'left:right'")
        a, b = m[1].lower(), m[2].lower()
        if a == b or a in seen or b in seen:
            raise HW3Error(f"{source}: {item!r} names {a if a == b or a in seen else b!r} twice (each word once)")
        seen |= {a, b}
        pairs.append((a, b))
    return tuple(pairs)


def swap_words(text: str, pairs: Sequence[tuple[str, str]]) -> str:
    """`text` with each pair's words traded wherever they stand as whole words, each in its own case
    (Left -> Right, LEFT -> RIGHT)."""
    table = {w: v for a, b in pairs for w, v in ((a, b), (b, a))}
    if not table:
        return text
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(table, key=len, reverse=True))) + r")\b",
                         re.IGNORECASE)

    def repl(m: re.Match) -> str:
        word, other = m[0], table[m[0].lower()]
        if word.isupper() and len(word) > 1:
            return other.upper()
        return other.capitalize() if word[0].isupper() else other

    return pattern.sub(repl, text)


def mirror_box(box: Sequence[int], width: int) -> tuple[int, int, int, int]:
    """A box (x0, y0, x1, y1; exclusive ends) in an image of `width` pixels, after a horizontal flip."""
    x0, y0, x1, y1 = box
    return width - x1, y0, width - x0, y1
