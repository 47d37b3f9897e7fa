"""The study's results as typed, validated records: an `Interval`, and the rows and studies of P1, P2 and
P3. Each is a pydantic dataclass with one JSON form (`to_json` / `from_json`): the notebooks write it into
figures/p*_summary.json, and the summary, the plots and the notebooks read it back through these classes,
so a misspelt or mistyped field fails where it is read, as one line naming the file and the field."""

from __future__ import annotations

from dataclasses import field
from functools import cache
from typing import Annotated, Any

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, model_serializer, model_validator
from pydantic.dataclasses import dataclass

from .errors import HW3Error


@cache
def _adapter(cls) -> TypeAdapter:
    return TypeAdapter(cls)


def validation_line(e: ValidationError) -> str:
    """pydantic's first error as "field a.b.c: message"."""
    err = e.errors()[0]
    where = ".".join(str(x) for x in err["loc"]) or "(top level)"
    return f"field {where}: {err['msg']}" + (f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else "")


class JsonRecord:
    """The JSON form of a result record: `to_json()` and `cls.from_json(data, source)`."""

    def to_json(self) -> Any:
        return _adapter(type(self)).dump_python(self, mode="json")

    def save(self, path) -> None:
        """Write the JSON form to `path` atomically (the previous file, if any, stays whole on a crash)."""
        from .files import atomic_write_json

        atomic_write_json(path, self.to_json())

    @classmethod
    def from_json(cls, data, source: str = "results"):
        """The record `data` describes; an HW3Error naming `source` and the field when it does not fit."""
        try:
            return _adapter(cls).validate_python(data)
        except ValidationError as e:
            raise HW3Error(f"{source}: {validation_line(e)}") from None


@dataclass(frozen=True)
class Interval(JsonRecord):
    low: float  # lower end
    high: float  # upper end
    level: float = 0.95  # coverage (every interval of the report is a 95% percentile bootstrap)

    def __iter__(self):  # lo, hi = interval
        yield self.low
        yield self.high

    def excludes(self, value: float = 0.0) -> bool:
        """`value` lies outside the interval (for a difference: a detectable one)."""
        return value < self.low or value > self.high

    @model_serializer
    def _as_pair(self) -> list[float]:  # JSON: [low, high]
        return [self.low, self.high]

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, v):
        if isinstance(v, list | tuple):
            if len(v) != 2:
                raise ValueError(f"an interval is [low, high], got {len(v)} numbers")
            return {"low": v[0], "high": v[1]}
        return v


@dataclass(frozen=True)
class Difference(JsonRecord):
    """B minus A on the same images: the estimate, its paired bootstrap interval, a two-sided p-value."""
    difference: float  # b - a
    ci: Interval  # paired percentile bootstrap interval
    p_value: float  # twice the share of resampled differences on the far side of 0


@dataclass(frozen=True)
class Accuracy(JsonRecord):
    accuracy: float  # share of images classified right
    ci: Interval  # bootstrap interval over images


@dataclass(frozen=True)
class CountZeroShot(JsonRecord):
    """A CLIP on the CountBench-style test: which of "a picture of one / two / three shapes" fits."""
    clip: str  # which CLIP
    n: int  # images
    accuracy: Accuracy
    by_count: dict[str, float]  # true count -> accuracy on its images
    chance: float  # one over the counts asked


@dataclass(frozen=True)
class PairedTest(JsonRecord):
    """Two classifiers right/wrong on the same images."""
    accuracy_a: float
    accuracy_b: float
    difference: float  # accuracy_b - accuracy_a
    ci: Interval  # paired bootstrap interval of the difference
    only_a: int  # images A gets right and B wrong
    only_b: int  # images B gets right and A wrong
    p_value: float  # exact two-sided McNemar test on the discordant pairs


# ----------------------------------------------------------------------------------------------
# P1


@dataclass(frozen=True)
class PromptRow(JsonRecord):
    """One line of the prompt table: a single prompt or a named ensemble."""
    prompt: str  # the template, or "ensemble: NAME (N)"
    templates: int  # templates averaged
    accuracy: float
    ci: Interval


@dataclass(frozen=True)
class PromptTest(JsonRecord):
    """Prompt `b` against prompt `a` on the same images."""
    a: str
    b: str
    test: PairedTest


@dataclass(frozen=True)
class Selection(JsonRecord):
    """Greedy template selection: chosen on one half of the images, scored on the other half."""
    pool: int  # templates to choose from
    chosen: list[str]  # in the order they were added
    held_out_accuracy_selected: float  # the chosen ensemble on the held-out half
    held_out_accuracy_all: float  # every template of the pool, averaged
    held_out_accuracy_best_single: float  # the template best on the choosing half
    per_template_accuracy: dict[str, float] | None = None  # every template alone (None: left out)


@dataclass
class PromptStudy(JsonRecord):
    rows: list[PromptRow]  # single prompts first, then ensembles
    paired_tests: list[PromptTest]  # every prompt against the first
    selection: Selection  # greedy template selection
    n_images: int
    chance: float  # 1 / classes
    best_single_prompt: str | None = None  # the single prompt with the highest accuracy


@dataclass
class NegationStudy(JsonRecord):
    positive: str  # the positive prompt
    negated: str  # its negation
    classes: list[str]
    cosine_per_class: list[float]  # cos(positive, negated) text embeddings per class
    cosine_mean: float
    same_prediction: float  # share of images where both prompts pick the same class
    same_prediction_ci: Interval
    same_prediction_per_class: list[float | None]  # by true class (None: no image of it)
    positive_accuracy: Accuracy
    negated_accuracy: Accuracy
    negated_inverted_accuracy: Accuracy  # the class the negated prompt scores lowest
    paired_negated_vs_positive: PairedTest
    chance: float


@dataclass(frozen=True)
class Correlation(JsonRecord):
    """Spearman's rank correlation with a two-sided permutation p-value."""
    rho: float = Field(ge=-1, le=1)
    p_value: float = Field(gt=0, le=1)  # a permutation p counts the observed pairing: never 0
    n: int = Field(ge=3)  # pairs


@dataclass(frozen=True)
class FramingRow(JsonRecord):
    framing: str  # "a photo of {object}"
    frequency: float  # share of the CLIP's training captions in this framing (0: never)
    word_frequency: float  # clip_text.PretrainingText.word_frequency of its words
    unseen_words: list[str]  # its words the CLIP never read
    accuracy: Accuracy


@dataclass(frozen=True)
class FrequencyStudy(JsonRecord):
    """P1 accuracy beside the pretraining text: the framings of the CLIP's own text (and unseen ones),
    and the report's prompts and OpenAI's templates by the frequency of their words."""
    framings: list[FramingRow]
    templates: list[FramingRow]  # the report's prompts first, then the OpenAI templates
    framing_correlation: Correlation  # accuracy vs framing frequency
    template_correlation: Correlation  # accuracy vs word frequency, over `templates`
    report_prompts: int  # how many of `templates` are the report's prompts


@dataclass(frozen=True)
class MultipleChoice(JsonRecord):
    """NegBench-style multiple choice: per image one true statement among false ones."""
    accuracy: Accuracy  # share of items answered right, 95% bootstrap interval over images
    by_type: dict[str, Accuracy]  # the same per question type (affirmation, negation, hybrid)
    items: int
    chance: float


@dataclass(frozen=True)
class NegationScores(JsonRecord):
    """One CLIP on the negation experiment."""
    name: str  # "base" or "negation-tuned"
    negation: NegationStudy  # P1's study of "This is not a photo of {object}"
    choice: MultipleChoice  # the multiple-choice test on P2 val images
    recall_at_1: Accuracy  # image->text recall@1 on the P2 val captions


@dataclass(frozen=True)
class StyleRow(JsonRecord):
    """One render style's images under every style's framing as a prompt."""
    style: str  # a render style (demo.styles.STYLES)
    images: Annotated[int, Field(ge=1)]  # P1 images in this style
    accuracy: list[float]  # per framing prompt (StyleStudy.prompts order)
    matched_vs_photo: PairedTest | None  # "a photo of a {object}" (a) vs this style's framing (b); None for photo


@dataclass
class StyleStudy(JsonRecord):
    """P1 by render style (demo world): does the framing that goes with an image's look help?"""
    clip: str  # which CLIP ("base", or the old design's, an ablation)
    prompts: list[str]  # one per style: its framing with "a {object}"
    prompt_styles: list[str]  # the style each prompt's framing goes with
    rows: list[StyleRow]  # one per style present
    matched_vs_mismatched: Difference  # per image: its style's framing (b) vs the mean of the others (a)
    report_pairs: list[PromptTest]  # every pair of the report's prompts, all images
    bare_vs_photo: PromptTest  # "{object}" (a) vs "a photo of a {object}." (b)
    ensemble_vs_photo: PromptTest  # "a photo of a {object}." (a) vs the 80-template ensemble (b)
    word_styles: dict[str, dict[str, list[float]]]  # prompt -> framing word -> share of its occurrences per style
    styles: list[str]  # the style order of word_styles

    def compared(self) -> list[StyleRow]:
        """The styles whose own framing was compared with "a photo of" (every style but photo)."""
        return [r for r in self.rows if r.matched_vs_photo is not None]

    def clear_styles(self) -> list[str]:
        """Styles whose own framing beats "a photo of" with the paired interval above 0."""
        return [r.style for r in self.compared() if r.matched_vs_photo.ci.low > 0]


@dataclass
class P1Summary(JsonRecord):
    """What the P1 notebook reports (figures/p1_summary.json)."""
    prompts: PromptStudy  # the prompt table, paired tests and template selection
    negation: NegationStudy  # does the CLIP read "not"?
    frequency: FrequencyStudy | None = None  # prompts against the pretraining text (demo world)
    negation_experiment: list[NegationScores] | None = None  # base vs negation-tuned CLIP (demo world)
    styles: list[StyleStudy] | None = None  # prompts by render style: the base CLIP, then ablations (demo world)
    counting: list[CountZeroShot] | None = None  # the CountBench-style count test, per CLIP (demo world)


# ----------------------------------------------------------------------------------------------
# P2


@dataclass(frozen=True)
class Share(JsonRecord):
    """A pooled share of words right over images (grounding), with its interval."""
    share: float | None  # None where no caption has such a word
    ci: Interval | None
    right: int
    total: int

    def percent(self) -> str:
        """The share as "12.3%" ("-" where there is none)."""
        return "-" if self.share is None else f"{self.share * 100:.1f}%"


@dataclass(frozen=True)
class Statements(JsonRecord):
    """Statements of where in a row's captions - one relation word, or regions - checked against the boxes
    (`metrics.relations.spatial_counts`)."""
    stated: int  # statements made
    checkable: int  # whose phrases each name exactly one object of the image
    true: int  # checkable ones true of the image
    share: float | None  # true / checkable (None: nothing checkable)
    ci: Interval | None  # 95% bootstrap interval over images

    def cell(self) -> str:
        """ "30/85 of 122 (35.3%)": true / checkable of stated."""
        share = "" if self.share is None else f" ({self.share * 100:.1f}%)"
        return f"{self.true}/{self.checkable} of {self.stated}{share}"


METRICS = ("CIDEr", "CLIPScore")  # the course evaluator's two scores


@dataclass
class VariantRow(JsonRecord):
    """One captioner on the val split: the P2 table's row (a PEFT variant, the untrained model, or the
    best variant with beam search when `beams` > 1)."""
    variant: str  # the variant's name ("untrained" for the model before training)
    CIDEr: float
    CLIPScore: float
    peft: str = "-"  # PEFT kind ("-": untrained)
    trainable: int = 0  # trainable parameters
    run: str | None = None  # the run folder
    beams: int = 1  # decoding: 1 = greedy
    ci: dict[str, Interval] = field(default_factory=dict)  # metric -> bootstrap interval over images
    grounding: dict[str, Share] | None = None  # demo world: kind (mentions, shapes, colors) -> share
    vs_reference: dict[str, Difference] | None = None  # metric, object metric or grounding kind -> paired difference
    objects: dict[str, Share] | None = None  # demo world: object metric (objects.METRICS) -> pooled value
    objects_by_count: dict[str, dict[str, Share]] | None = None  # "1", "2", "3" objects -> the same, on those images
    relations: Share | None = None  # demo world: stated relations (checkable ones) that are true of the image
    spatial: dict[str, Statements] | None = None  # demo world: each relation word and "region" -> its statements
    steps: int | None = None  # optimiser steps it trained (None: not trained, or not recorded)
    best_step: int | None = None  # the step of the checkpoint kept (chosen on held-out training images)
    stopped: bool = False  # early stopping ended its training (its held-out curve stopped rising)
    assets: str | None = None  # its asset manifest where it is not the table's (another encoder)
    against: str | None = None  # the ablation row its vs_reference differences are against (None: the reference)

    def score(self, metric: str, n_objects: str | None = None) -> tuple[float | None, Interval | None]:
        """The value and interval of CIDEr, CLIPScore, an object metric ("exact", "recall", ...; on the
        images holding `n_objects` objects when given) or a grounding kind ("mentions", ...)."""
        if metric in METRICS:
            return getattr(self, metric), self.ci.get(metric)
        table = (self.objects_by_count or {}).get(n_objects) if n_objects else self.objects
        g = (table or {}).get(metric) or (self.grounding or {}).get(metric)
        return (None, None) if g is None else (g.share, g.ci)


@dataclass(frozen=True)
class ProbeRow(JsonRecord):
    """A linear probe of the frozen encoder's tokens (`metrics.probe`)."""
    task: str  # what is read off: "patch colour", "patch shape", "object count (CLS token)", ...
    accuracy: float  # on the scored items (other images than the probe was fitted on)
    chance: float  # the most frequent class's share of the scored items
    items: int  # scored items (patches or images)
    encoder: str | None = None  # which encoder, where a study probes more than one ("count-blind", ...)


@dataclass(frozen=True)
class CurvePoint(JsonRecord):
    """One validation of a training run, on its held-out training images (`training.selection`)."""
    step: int
    cider: float | None = None
    exact: float | None = None  # whole scene named exactly (demo world)
    recall: float | None = None
    repeats: float | None = None
    pointing_named: float | None = None  # attention peak inside the named object's box, over its phrase
    pointing_next: float | None = None  # the same where the phrase begins: the next object chosen


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Validation(JsonRecord):
    """One validation as a run's log.jsonl records it (`training.selection.selection_validator`); a field
    that is not one of these is refused, by name."""
    step: int
    epoch: int
    val_loss: float | None = None  # teacher-forced loss on the held-out images (when `select_by = val_loss`)
    cider: float | None = None
    example: str | None = None  # the first held-out image's caption
    exact: float | None = None  # the object metrics (demo world)
    recall: float | None = None
    repeats: float | None = None
    pointing_named: float | None = None  # the pointing game over the phrase naming an object
    pointing_next: float | None = None  # and where the phrase begins
    box_mass: float | None = None  # attention mass inside the named object's box

    def curve_point(self) -> CurvePoint:
        return CurvePoint(self.step, self.cider, self.exact, self.recall, self.repeats, self.pointing_named,
                          self.pointing_next)


@dataclass(frozen=True)
class RunSummary(JsonRecord):
    """A finished training run: its summary.json (`training.loop.fit`)."""
    steps: int  # optimiser steps taken
    best: float | None  # the best validation score (the checkpoint kept), None without validation
    best_step: int | None  # the step that made it
    parameters: dict[str, int]  # "trainable", "frozen" and the trainable ones per component
    stopped: bool = False  # early stopping ended it: its held-out curve stopped rising (`patience`)
    seconds: float | None = None  # older runs only: wall-clock time now lives in timing.jsonl, not in the result

    @property
    def trainable(self) -> int:
        return self.parameters["trainable"]


@dataclass
class VariantTable(JsonRecord):
    """P2's summary: every variant's row, the best one, beam search on it, the reference variant."""
    rows: list[VariantRow]
    best: VariantRow | None  # the trained variant with the highest CIDEr
    beam: VariantRow | None  # the best variant decoded with beam search
    reference: str | None  # the variant every row is compared with (the report's setting)
    tokenizer: str = "ptb"  # the CIDEr tokenizer
    decoding: list[VariantRow] = field(default_factory=list)  # the best variant under each decoding control
    ablation: list[VariantRow] = field(default_factory=list)  # the reference PEFT under each recipe (mechanisms)
    recipe: str | None = None  # the ablation row every variant trains with
    curves: dict[str, list[CurvePoint]] = field(default_factory=dict)  # run (variant or ablation row) -> validations
    probe: list[ProbeRow] = field(default_factory=list)  # linear probes of the frozen encoder
    # the captioner the report shows (P3, the examples, the headline): a recipe trained until its held-out
    # learning curve stopped rising (early stopping), not held to the variants' equal steps
    shown: VariantRow | None = None

    def rows_by_name(self) -> dict[str, VariantRow]:
        return {r.variant: r for r in self.rows}


# ----------------------------------------------------------------------------------------------
# P3


@dataclass
class Localisation(JsonRecord):
    """Pointing game and deletion per attention method (and random maps) on the demo world's nouns."""
    nouns: int  # object nouns scored
    images: int  # captions with at least one
    pointing: dict[str, float | None]  # method -> share of nouns whose map peak is on the object
    pointing_ci: dict[str, Interval | None]  # method -> interval over images
    vs_random: dict[str, Difference]  # method -> paired difference against random maps
    pointing_by_shape: dict[str, dict[str, int | float | None]]  # shape -> {"nouns": n, method: share}
    deletion_auc: dict[str, float] | None  # method -> mean deletion score (lower is better)
    pointing_per_layer_head: list[list[float]] | None  # (L, H) pointing share of raw attention
    wrong_nouns: int = 0  # shape nouns whose mention is wrong (a repeat, or a type the image lacks)
    # method -> where a wrong noun's map peaks: "named" (an object of the word's type), "other" (another
    # object of the image), "none" (no object) - as shares of wrong_nouns
    wrong_words: dict[str, dict[str, float]] | None = None


@dataclass(frozen=True)
class Extreme(JsonRecord):
    """The val caption with the highest (or lowest) CLIPScore."""
    image: str  # file name
    CLIPScore: float
    caption: str


@dataclass
class P3Summary(JsonRecord):
    """What the P3 notebook reports: the P3 images' captions, the CLIPScore extremes, localisation."""
    p3_captions: dict[str, str]  # P3 image file name -> caption
    extremes: dict[str, Extreme]  # "top-1", "last-1" -> the caption
    localisation: Localisation | None = None  # demo world only
    layers: str | list[int] = "last"  # the maps' layers: "last", "all" or indices
    heads: str | list[int] = "mean"  # and heads: "mean", "max" or indices
