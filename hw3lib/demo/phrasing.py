"""The demo world's caption grammar, written once: how a caption names objects and relations, and how a
caption is read back. `world.make_captions` writes with it; every reader (the object metrics, grounding,
relations, P3's noun boxes, the demo CLIP's zero-shot template) reads with it.

A *noun phrase* is [article] [size] [colour] shape, or [article] [size] shape "coloured" colour:
"a small red circle", "red circle", "a large circle coloured red". A *relation* is a noun phrase, one of
`RELATION_WORDS`, and another noun phrase ("a red circle above a blue star"), or, with "it" after the
relation, the phrase before the subject ("a red circle with a blue star above it": the star is above the
circle). Scenes hold one to three objects; every caption of a scene names each of its objects once.

`GRAMMAR` is a digest of this file, recorded in DEMO.json: a world whose captions another grammar wrote
is told apart (the Makefile rebuilds the world when this file changes).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

GRAMMAR = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]  # recorded in DEMO.json ("grammar")

SIZE_WORDS = ("small", "large")  # world.SIZES gives each its side in grid cells
COLOURED = ("coloured", "colored")  # "a large circle coloured red"
SINGLE_OBJECT = "a single {object}"  # a one-object phrasing; also the demo CLIP's zero-shot template
COUNT_WORDS = ("one", "two", "three", "four")  # how captions say a number of objects
# how the count-aware CLIP's training states a count (`stated_count`); not the zero-shot count prompt
COUNT_STATEMENTS = ("{count} in the picture", "{count} on a plain background", "{count}, nothing else")
# the words captions use for where one object is relative to another
RELATION_WORDS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
RELATIONS = {words: side for side, words in RELATION_WORDS.items()}  # "to the left of" -> "left"
_RELATION = re.compile(r"\b(" + "|".join(RELATIONS) + r")\b(\s+it\b)?")
_WORD = re.compile(r"[a-z]+")


# ----------------------------------------------------------------------------------------------
# writing


def noun_phrase(o, size: bool = True) -> str:
    """ "small red circle" (or "red circle" without the size) for an object (`world.Obj`)."""
    return " ".join(([o.size] if size else []) + [o.color, o.shape])


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


REGIONS = ("top left", "top right", "bottom left", "bottom right", "top", "bottom", "left", "right", "centre")
_REGION = re.compile(r"\s+(?:in|near) the (" + "|".join(REGIONS) + r")\b")  # after a noun phrase


def region(o, side: int) -> str:
    """Where an object lies in a `side`-pixel image (one of `REGIONS`): "top left", "centre", "bottom", ..."""
    cx, cy = o.center
    col = "left" if cx < side / 3 else "right" if cx > 2 * side / 3 else ""
    row = "top" if cy < side / 3 else "bottom" if cy > 2 * side / 3 else ""
    return f"{row} {col}".strip() or "centre"


def side_of(a, b) -> str:
    """Where `a` is relative to `b` (box centres, the larger offset decides): a key of `RELATION_WORDS`."""
    dx, dy = a.center[0] - b.center[0], a.center[1] - b.center[1]
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


def holds(side: str, a, b) -> bool:
    """Is `a` on `side` of `b` (by box centres)? The reading of a stated relation against boxes."""
    (ax, ay), (bx, by) = a.center, b.center
    return {"left": ax < bx, "right": ax > bx, "above": ay < by, "below": ay > by}[side]


def count_phrase(n: int) -> str:
    """ "two shapes": a number of objects as captions say it ("two shapes: ..."), and as the CountBench-style
    zero-shot prompt asks it."""
    return f"{COUNT_WORDS[n - 1]} shape{'s' if n > 1 else ''}"


def stated_count(n: int, framing: int) -> str:
    """ "three shapes in the picture": a statement of `n` objects in one of the `COUNT_STATEMENTS` (Paiss et
    al.'s counterfactual caption when `n` is not the image's count). It lists no object, so a text alone
    cannot tell a true statement from a false one: only the image can."""
    return COUNT_STATEMENTS[framing].format(count=count_phrase(n))


def caption_pool(o: list, side: int, reading: bool) -> list[str]:
    """Every phrasing of a scene whose objects come in the order `o` (one to three). With `reading`
    every phrasing names them in that order; without, two phrasings name them in another order."""
    def np_(x, size=True):
        return article(noun_phrase(x, size))

    def rel(a, b):
        return RELATION_WORDS[side_of(a, b)]

    if len(o) == 1:
        a = o[0]
        return [
            f"{np_(a)} on a plain background",
            f"{np_(a, False)} in the {region(a, side)} of the picture",
            f"a picture of one {noun_phrase(a)}",
            f"there is {np_(a)} in the {region(a, side)}",
            SINGLE_OBJECT.format(object=f"{a.color} {a.shape}"),
            f"{article(a.size)} {a.shape} {COLOURED[0]} {a.color}",
            f"one {a.color} {a.shape} near the {region(a, side)}",
        ]
    if len(o) == 2:
        a, b = o
        return [
            f"{np_(a)} {rel(a, b)} {np_(b)}",
            f"{np_(a)} with {np_(b)} {rel(b, a)} it" if reading else f"{np_(b)} {rel(b, a)} {np_(a)}",
            f"{np_(a, False)} and {np_(b, False)}",
            f"{count_phrase(2)}: {np_(a)} and {np_(b)}",
            f"a picture of {np_(a, False)} and {np_(b, False)}" if reading else
            f"a picture of {np_(b, False)} and {np_(a, False)}",
            f"{np_(a, False)} in the {region(a, side)} and {np_(b, False)} in the {region(b, side)}",
            f"there is {np_(a, False)} {rel(a, b)} {np_(b, False)}",
        ]
    a, b, c = o
    return [
        f"{np_(a)}, {np_(b)} and {np_(c)}",
        f"{count_phrase(3)}: {np_(a, False)}, {np_(b, False)} and {np_(c, False)}",
        f"{np_(a, False)} {rel(a, b)} {np_(b, False)}, with {np_(c, False)}",
        f"{np_(a, False)} {rel(a, b)} {np_(b, False)} and {np_(c, False)}" if reading else
        f"{np_(c, False)} {rel(c, a)} {np_(a, False)} and {np_(b, False)}",
        f"a picture of {np_(a)}, {np_(b)} and {np_(c)}" if reading else f"a picture of {np_(b)}, {np_(c)} and {np_(a)}",
        f"{np_(a, False)}, {np_(b, False)} and {np_(c, False)} on a plain background",
        f"{np_(a, False)}, and {np_(b, False)} {rel(b, c)} {np_(c, False)}",
    ]


# ----------------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class Mention:
    shape: str
    color: str | None  # None: the shape is named without a colour


def words(caption: str) -> list[str]:
    """Lower-case word tokens (letters only), the unit every reading is made of."""
    return _WORD.findall(caption.lower())


def mention_positions(w: list[str], shapes, colors) -> list[tuple[int, Mention]]:
    """(index of the shape word, mention) for every object a word sequence names, in order. The colour
    is the word before the shape, or the one after "coloured"."""
    shape_set, color_set = set(shapes), set(colors)
    out = []
    for i, word in enumerate(w):
        if word not in shape_set:
            continue
        color = None
        if i > 0 and w[i - 1] in color_set:
            color = w[i - 1]
        elif i + 2 < len(w) and w[i + 1] in COLOURED and w[i + 2] in color_set:
            color = w[i + 2]
        out.append((i, Mention(word, color)))
    return out


def token_mentions(pieces: list[str], shapes, colors) -> list[tuple[int, Mention]]:
    """`mention_positions` for a caption given as tokenizer pieces (" red", " hex", "agon"): the index is
    the piece that ends the shape word, whatever the tokenizer splits it into."""
    text, ends = "", []
    for k, piece in enumerate(pieces):
        text += piece
        ends += [k] * len(piece)  # the piece each character of `text` comes from
    spans = list(_WORD.finditer(text.lower()))
    found = mention_positions([m.group() for m in spans], shapes, colors)
    return [(ends[spans[i].end() - 1], m) for i, m in found]


def mentions(caption: str, shapes, colors) -> list[Mention]:
    """The objects a caption names, in order."""
    return [m for _, m in mention_positions(words(caption), shapes, colors)]


@dataclass(frozen=True)
class Phrase:
    """One phrase of a caption that names an object."""
    chars: tuple[int, int]  # [start, end) in the caption's text
    shape: str
    color: str | None  # None: the shape is named without a colour
    size: str | None  # None: no size word

    def fits(self, o) -> bool:
        """Could this phrase name object `o` (its shape; its colour and size where the phrase says them)?"""
        return o.shape == self.shape and self.color in (None, o.color) and self.size in (None, o.size)


def phrases(caption: str, shapes, colors) -> list[Phrase]:
    """Every phrase naming an object, in caption order: the shape word with the size and colour words
    in front of it, or with "coloured <colour>" behind it."""
    spans = [(m.start(), m.end()) for m in _WORD.finditer(caption.lower())]
    w = [caption[s:e].lower() for s, e in spans]
    out = []
    for i, m in mention_positions(w, shapes, colors):
        start, end, size = i, i, None
        while start > 0 and (w[start - 1] in colors or w[start - 1] in SIZE_WORDS) and i - start < 2:
            start -= 1
            size = w[start] if w[start] in SIZE_WORDS else size
        if m.color is not None and i + 2 < len(w) and w[i + 1] in COLOURED and w[i + 2] == m.color:
            end = i + 2  # "a large circle coloured red"
        out.append(Phrase((spans[start][0], spans[end][1]), m.shape, m.color, size))
    return out


@dataclass(frozen=True)
class Relation:
    subject: Phrase
    relation: str  # a key of RELATION_WORDS: left | right | above | below
    object: Phrase


@dataclass(frozen=True)
class RegionStatement:
    subject: Phrase
    region: str  # one of REGIONS


def stated_regions(caption: str, shapes, colors) -> list[RegionStatement]:
    """Every region a caption states for a phrase naming an object ("a red circle in the top left",
    "one red circle near the bottom"), in order: the phrase, then "in the" or "near the" and a region."""
    text = caption.lower()
    out = []
    for p in phrases(text, shapes, colors):
        m = _REGION.match(text, p.chars[1])
        if m:
            out.append(RegionStatement(p, m.group(1)))
    return out


def stated_relations(caption: str, shapes, colors) -> list[Relation]:
    """Every relation a caption states between two phrases naming objects, in order."""
    text = caption.lower()
    found = phrases(text, shapes, colors)
    out = []
    for m in _RELATION.finditer(text):
        before = [k for k, p in enumerate(found) if p.chars[1] <= m.start()]
        if not before:
            continue
        subject = before[-1]
        if m.group(2):  # "... with Y above it": it = the phrase before Y
            obj = before[-2] if len(before) > 1 else None
        else:
            obj = next((k for k, p in enumerate(found) if p.chars[0] >= m.end()), None)
        if obj is not None:
            out.append(Relation(found[subject], RELATIONS[m.group(1)], found[obj]))
    return out
