"""Negation: the phrasings a negation-aware CLIP is trained on, a NegBench-style test (Alhamoud et al.
2025), and an inference-time baseline.

Captions that also state what a scene does not hold ("a red circle, but no square", "no star here"):
`hw3 demo-models` fine-tunes the demo CLIP on them with counterfactual image pairs
(`counterfactual`), and the P1 notebook compares the CLIPs on:
  - the multiple-choice test below: per val image, one true statement and three false ones;
  - image->text recall@1 on the val captions, so that the fix does not cost retrieval;
  - the P1 negation study ("This is not a photo of {object}" read inverted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.images import open_image
from ..core.results import Accuracy, MultipleChoice, NegationScores
from ..demo.world import DemoWorld, Obj
from ..metrics.stats import bootstrap_ci

# Negations for the fine-tune: "{d}" is the scene's description, "{a}" a shape (absent: a true negation).
# None is a phrasing of the multiple-choice test below ("there is no ...", "... and no ..."), so the test
# asks in words the fine-tune never used.
NEGATIONS: tuple[str, ...] = ("{d}, but no {a}", "{d} without a {a}", "{d}, not a {a}", "{d}; the picture has no {a}",
                              "no {a} here", "this is not a {a}")
STANDALONE: tuple[str, ...] = tuple(n for n in NEGATIONS if "{d}" not in n)  # negations without a description

# The multiple-choice test. Each item has one true statement; which kind rotates over the images.
# `x` names a present object ("red circle"), `y` an absent shape ("star"), `yc` an absent shape in a colour.
QUESTION_TYPES = ("affirmation", "negation", "hybrid")
TRUE_CHOICE = {"affirmation": "there is a {x}", "negation": "there is no {y}", "hybrid": "a {x} and no {y}"}
FALSE_CHOICES = ("there is no {xs}",  # negates an object the image holds
                 "there is a {yc}",  # affirms an absent object (a hard negative)
                 "a {yc} and no {xs}")  # both wrong


def absent_shapes(present: set[str], shapes: list[str]) -> list[str]:
    return [s for s in shapes if s not in present]


@dataclass(frozen=True)
class ChoiceItem:
    image: str  # image file name
    question_type: str  # one of QUESTION_TYPES
    choices: tuple[str, ...]  # the true statement first
    answer: int = 0  # index of the true statement in `choices`


def choice_item(name: str, objects: Sequence[Obj], shapes: list[str], colors: list[str], k: int,
                rng: np.random.Generator) -> ChoiceItem | None:
    """The k-th image's item (question type k mod 3); None when the image holds every shape."""
    present = {o.shape for o in objects}
    absent = absent_shapes(present, shapes)
    if not absent:
        return None
    o = objects[int(rng.integers(len(objects)))]
    x, xs = f"{o.color} {o.shape}", o.shape
    y = absent[int(rng.integers(len(absent)))]
    yc = f"{colors[int(rng.integers(len(colors)))]} {y}"
    qt = QUESTION_TYPES[k % len(QUESTION_TYPES)]
    fill = {"x": x, "xs": xs, "y": y, "yc": yc}
    return ChoiceItem(name, qt, (TRUE_CHOICE[qt].format(**fill), *(c.format(**fill) for c in FALSE_CHOICES)))


def choice_items(objects: list[Sequence[Obj]], names: list[str], shapes: list[str], colors: list[str],
                 seed: int = 0) -> list[ChoiceItem]:
    """One item per image that has objects and lacks some shape; `objects[i]` are image i's boxes."""
    rng = np.random.default_rng([seed, 20])
    items = [choice_item(n, objs, shapes, colors, k, rng) for k, (n, objs) in enumerate(zip(names, objects, strict=True))
             if objs]
    return [it for it in items if it is not None]


def choice_correct(image_features: torch.Tensor, choice_features: torch.Tensor, answers) -> np.ndarray:
    """(N,) bool: whether each image's most similar choice is its answer. image_features (N, D),
    choice_features (N, K, D), both normalised; answers (N,)."""
    sims = torch.einsum("nd,nkd->nk", image_features, choice_features)  # (N, K)
    return sims.argmax(dim=1).numpy() == np.asarray(answers)


def multiple_choice(image_features: torch.Tensor, choice_features: torch.Tensor, items: list[ChoiceItem],
                    n_boot: int = 2000, seed: int = 0) -> MultipleChoice:
    ok = choice_correct(image_features, choice_features, [it.answer for it in items])
    kinds = np.array([it.question_type for it in items])

    def acc(mask) -> Accuracy:
        return Accuracy(float(ok[mask].mean()), bootstrap_ci(ok[mask], n_boot=n_boot, seed=seed))

    by_type = {t: acc(kinds == t) for t in QUESTION_TYPES if (kinds == t).any()}
    return MultipleChoice(acc(np.ones(len(items), bool)), by_type, len(items), 1.0 / len(items[0].choices))


def negation_by_sign(text: str) -> list[tuple[float, str]]:
    """An inference-time reading of negation: score("no X") := -score("X"). `text` as signed affirmative
    parts: "a red circle and no star" -> [(+1, "a red circle"), (-1, "there is a star")], "there is no
    star" -> [(-1, "there is a star")], "This is not a photo of circle" -> [(-1, "This is a photo of circle")]."""
    if " and no " in text:
        left, right = text.split(" and no ", 1)
        return [(1.0, left), (-1.0, f"there is a {right}")]
    if text.startswith("there is no "):
        return [(-1.0, "there is a " + text[len("there is no "):])]
    if " not " in text:
        return [(-1.0, text.replace(" not ", " ", 1))]
    return [(1.0, text)]


def sign_text_features(clip, texts: list[str], device="cpu") -> torch.Tensor:
    """(N, D): each text's signed sum of its affirmative parts' normalised features (`negation_by_sign`)."""
    from ..models.clip import encode_texts

    parts = [negation_by_sign(t) for t in texts]
    flat = [p for ps in parts for _, p in ps]
    feats = encode_texts(clip, flat, device=device)
    signs = torch.tensor([s for ps in parts for s, _ in ps])
    owner = torch.tensor([i for i, ps in enumerate(parts) for _ in ps])
    return torch.zeros(len(texts), feats.shape[1]).index_add_(0, owner, signs[:, None] * feats)


def recall_hits(image_features: torch.Tensor, text_features: torch.Tensor) -> np.ndarray:
    """(N,) bool: image i's most similar text is text i. Both (N, D), normalised."""
    return ((image_features @ text_features.T).argmax(dim=1) == torch.arange(len(image_features))).numpy()


def recall_at_1(image_features: torch.Tensor, text_features: torch.Tensor, n_boot: int = 2000,
                seed: int = 0) -> Accuracy:
    """Image->text recall@1 with its bootstrap interval over images."""
    ok = recall_hits(image_features, text_features)
    return Accuracy(float(ok.mean()), bootstrap_ci(ok, n_boot=n_boot, seed=seed))


@dataclass(frozen=True)
class _Experiment:
    """What every CLIP of `negation_benchmark` is scored on."""
    p1_study: object  # P1's ZeroShotStudy (its images are re-encoded for another CLIP)
    val_names: list[str]  # the P2 val images' file names
    val_captions: list[str]  # one caption each (for recall)
    items: list[ChoiceItem]  # the multiple-choice items, naming their images
    prompts: tuple[str, str]  # P1's (positive, negated) prompts
    n_boot: int
    seed: int
    device: str


def negation_scores(name: str, clip, val: torch.Tensor, e: _Experiment, by_sign: bool = False) -> NegationScores:
    """One CLIP on the experiment; `val` (N, D) are its features of the P2 val images. `by_sign` reads every
    negation by the inference-time rule score("no X") := -score("X") (`negation_by_sign`), a sanity bound."""
    from ..models.clip import encode_texts
    from .classify import negation_study

    study = e.p1_study.with_clip(clip)
    row = {n: i for i, n in enumerate(e.val_names)}
    texts = [c for it in e.items for c in it.choices]
    choices = sign_text_features(clip, texts, e.device) if by_sign else encode_texts(clip, texts, device=e.device)
    choices = choices.view(len(e.items), len(e.items[0].choices), -1)  # (M, K, D)
    signed = None
    if by_sign:
        pos = study.text_features([e.prompts[0]])[0]  # (C, D)
        signed = torch.stack([pos, -pos])  # the negated prompt scored as minus the positive one
    return NegationScores(name, negation_study(study, *e.prompts, e.n_boot, e.seed, signed),
                          multiple_choice(val[[row[it.image] for it in e.items]], choices, e.items, e.n_boot, e.seed),
                          recall_at_1(val, encode_texts(clip, e.val_captions, device=e.device), e.n_boot, e.seed))


def negation_benchmark(clips: dict, p1_study, world: DemoWorld, prompts: tuple[str, str], n_boot: int = 2000,
                       seed: int = 0, device="cpu", sign_baseline: str | None = None) -> list[NegationScores]:
    """Every CLIP of `clips` (name -> ClipBundle) on P1's negation study of `prompts` (positive, negated)
    and, on the demo world's P2 val split and its objects, the multiple-choice test and recall@1 (each
    image's first caption). With `sign_baseline` (a name of `clips`), that CLIP once more with negation
    read by sign (`negation_by_sign`)."""
    from ..core.data import read_caption_file
    from ..demo.world import boxes_for
    from ..models.clip import encode_images

    p2_dir, shapes, colors = world.root / "p2_data", list(world.shapes), list(world.colors)
    val = read_caption_file(p2_dir / "val.json", p2_dir / "images" / "val")
    boxes = world.objects("p2_data")
    names = [im.path.name for im in val.images]
    items = choice_items([boxes_for(n, boxes, "val", default=()) for n in names], names, shapes, colors, seed)
    images = [open_image(im.path) for im in val.images]
    captions = [val.captions[im.id][0] for im in val.images]
    runs = [(name, clip, False) for name, clip in clips.items()]
    if sign_baseline is not None:
        runs.append((f"{sign_baseline}, negation by sign", clips[sign_baseline], True))
    features = {id(clip): encode_images(clip, images, device=device) for clip in clips.values()}  # (N, D) each
    e = _Experiment(p1_study, names, captions, items, tuple(prompts), n_boot, seed, device)
    return [negation_scores(name, clip, features[id(clip)], e, by_sign) for name, clip, by_sign in runs]
