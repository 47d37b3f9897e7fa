"""The study's results as types: one `Interval`, and typed rows for the P1 prompt table, the P2 variants
and the P3 localisation. Each type has one JSON form (`to_json` / `from_json`): the notebooks write it
into figures/p*_summary.json, and report.py, plots.py and the notebooks read it back through these
classes, so a misspelt field fails where it is read, not where a report cell happens to reach it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Interval:
    low: float  # lower end
    high: float  # upper end
    level: float = 0.95  # coverage (every interval of the report is a 95% percentile bootstrap)

    def __iter__(self):  # lo, hi = interval
        yield self.low
        yield self.high

    def excludes(self, value: float = 0.0) -> bool:
        """`value` lies outside the interval (for a difference: a detectable one)."""
        return value < self.low or value > self.high

    def to_json(self) -> list[float]:
        return [self.low, self.high]

    @classmethod
    def from_json(cls, v) -> Interval | None:
        return None if v is None else cls(float(v[0]), float(v[1]))


def _interval_map(d: dict | None) -> dict[str, Interval | None]:
    return {k: Interval.from_json(v) for k, v in (d or {}).items()}


@dataclass(frozen=True)
class Difference:
    """B minus A on the same images: the estimate, its paired bootstrap interval, a two-sided p-value."""
    difference: float  # b - a
    ci: Interval  # paired percentile bootstrap interval
    p_value: float  # twice the share of resampled differences on the far side of 0

    def to_json(self) -> dict:
        return {"difference": self.difference, "ci": self.ci.to_json(), "p_value": self.p_value}

    @classmethod
    def from_json(cls, d: dict | None) -> Difference | None:
        return None if d is None else cls(d["difference"], Interval.from_json(d["ci"]), d["p_value"])


@dataclass(frozen=True)
class Accuracy:
    accuracy: float  # share of images classified right
    ci: Interval  # bootstrap interval over images

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy, "ci": self.ci.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> Accuracy:
        return cls(d["accuracy"], Interval.from_json(d["ci"]))


@dataclass(frozen=True)
class PairedTest:
    """Two classifiers right/wrong on the same images."""
    accuracy_a: float
    accuracy_b: float
    difference: float  # accuracy_b - accuracy_a
    ci: Interval  # paired bootstrap interval of the difference
    only_a: int  # images A gets right and B wrong
    only_b: int  # images B gets right and A wrong
    p_value: float  # exact two-sided McNemar test on the discordant pairs

    def to_json(self) -> dict:
        return {"accuracy_a": self.accuracy_a, "accuracy_b": self.accuracy_b, "difference": self.difference,
                "ci": self.ci.to_json(), "only_a": self.only_a, "only_b": self.only_b, "p_value": self.p_value}

    @classmethod
    def from_json(cls, d: dict) -> PairedTest:
        return cls(d["accuracy_a"], d["accuracy_b"], d["difference"], Interval.from_json(d["ci"]), d["only_a"],
                   d["only_b"], d["p_value"])


# ----------------------------------------------------------------------------------------------
# P1


@dataclass(frozen=True)
class PromptRow:
    """One line of the prompt table: a single prompt or a named ensemble."""
    prompt: str  # the template, or "ensemble: NAME (N)"
    templates: int  # templates averaged
    accuracy: float
    ci: Interval

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "templates": self.templates, "accuracy": self.accuracy, "ci": self.ci.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> PromptRow:
        return cls(d["prompt"], d["templates"], d["accuracy"], Interval.from_json(d["ci"]))


@dataclass(frozen=True)
class PromptTest:
    """Prompt `b` against prompt `a` on the same images."""
    a: str
    b: str
    test: PairedTest

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, **self.test.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> PromptTest:
        return cls(d["a"], d["b"], PairedTest.from_json(d))


@dataclass
class PromptStudy:
    rows: list[PromptRow]  # single prompts first, then ensembles
    paired_tests: list[PromptTest]  # every prompt against the first
    selection: dict  # greedy template selection: pool, chosen, held-out accuracies (and per template)
    n_images: int
    chance: float  # 1 / classes
    best_single_prompt: str | None = None  # the single prompt with the highest accuracy

    def to_json(self) -> dict:
        out = {"rows": [r.to_json() for r in self.rows], "paired_tests": [t.to_json() for t in self.paired_tests],
               "selection": self.selection, "n_images": self.n_images, "chance": self.chance}
        if self.best_single_prompt is not None:
            out["best_single_prompt"] = self.best_single_prompt
        return out

    @classmethod
    def from_json(cls, d: dict) -> PromptStudy:
        return cls([PromptRow.from_json(r) for r in d["rows"]], [PromptTest.from_json(t) for t in d["paired_tests"]],
                   d["selection"], d["n_images"], d["chance"], d.get("best_single_prompt"))


@dataclass
class NegationStudy:
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

    def to_json(self) -> dict:
        return {"positive": self.positive, "negated": self.negated, "classes": self.classes,
                "cosine_per_class": self.cosine_per_class, "cosine_mean": self.cosine_mean,
                "same_prediction": self.same_prediction, "same_prediction_ci": self.same_prediction_ci.to_json(),
                "same_prediction_per_class": self.same_prediction_per_class,
                "positive_accuracy": self.positive_accuracy.to_json(),
                "negated_accuracy": self.negated_accuracy.to_json(),
                "negated_inverted_accuracy": self.negated_inverted_accuracy.to_json(),
                "paired_negated_vs_positive": self.paired_negated_vs_positive.to_json(), "chance": self.chance}

    @classmethod
    def from_json(cls, d: dict) -> NegationStudy:
        return cls(d["positive"], d["negated"], d["classes"], d["cosine_per_class"], d["cosine_mean"],
                   d["same_prediction"], Interval.from_json(d["same_prediction_ci"]), d["same_prediction_per_class"],
                   Accuracy.from_json(d["positive_accuracy"]), Accuracy.from_json(d["negated_accuracy"]),
                   Accuracy.from_json(d["negated_inverted_accuracy"]),
                   PairedTest.from_json(d["paired_negated_vs_positive"]), d["chance"])


@dataclass(frozen=True)
class Correlation:
    """Spearman's rank correlation with a two-sided permutation p-value."""
    rho: float
    p_value: float
    n: int

    def to_json(self) -> dict:
        return {"rho": self.rho, "p_value": self.p_value, "n": self.n}

    @classmethod
    def from_json(cls, d: dict) -> Correlation:
        return cls(d["rho"], d["p_value"], d["n"])


@dataclass(frozen=True)
class FramingRow:
    framing: str  # "a photo of {object}"
    frequency: float  # share of the CLIP's training captions in this framing (0: never)
    word_frequency: float  # clip_text.PretrainingText.word_frequency of its words
    unseen_words: list[str]  # its words the CLIP never read
    accuracy: Accuracy

    def to_json(self) -> dict:
        return {"framing": self.framing, "frequency": self.frequency, "word_frequency": self.word_frequency,
                "unseen_words": self.unseen_words, "accuracy": self.accuracy.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> FramingRow:
        return cls(d["framing"], d["frequency"], d["word_frequency"], d["unseen_words"], Accuracy.from_json(d["accuracy"]))


@dataclass(frozen=True)
class FrequencyStudy:
    """P1 accuracy beside the pretraining text: the framings of the CLIP's own text (and unseen ones),
    and the report's prompts and OpenAI's templates by the frequency of their words."""
    framings: list[FramingRow]
    templates: list[FramingRow]  # the report's prompts first, then the OpenAI templates
    framing_correlation: Correlation  # accuracy vs framing frequency
    template_correlation: Correlation  # accuracy vs word frequency, over `templates`
    report_prompts: int  # how many of `templates` are the report's prompts

    def to_json(self) -> dict:
        return {"framings": [r.to_json() for r in self.framings], "templates": [r.to_json() for r in self.templates],
                "framing_correlation": self.framing_correlation.to_json(),
                "template_correlation": self.template_correlation.to_json(), "report_prompts": self.report_prompts}

    @classmethod
    def from_json(cls, d: dict) -> FrequencyStudy:
        return cls([FramingRow.from_json(r) for r in d["framings"]], [FramingRow.from_json(r) for r in d["templates"]],
                   Correlation.from_json(d["framing_correlation"]), Correlation.from_json(d["template_correlation"]),
                   d["report_prompts"])


@dataclass(frozen=True)
class MultipleChoice:
    """NegBench-style multiple choice: per image one true statement among false ones."""
    accuracy: Accuracy  # share of items answered right, 95% bootstrap interval over images
    by_type: dict[str, Accuracy]  # the same per question type (affirmation, negation, hybrid)
    items: int
    chance: float

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy.to_json(), "by_type": {k: v.to_json() for k, v in self.by_type.items()},
                "items": self.items, "chance": self.chance}

    @classmethod
    def from_json(cls, d: dict) -> MultipleChoice:
        return cls(Accuracy.from_json(d["accuracy"]), {k: Accuracy.from_json(v) for k, v in d["by_type"].items()},
                   d["items"], d["chance"])


@dataclass(frozen=True)
class NegationScores:
    """One CLIP on the negation experiment."""
    name: str  # "base" or "negation-tuned"
    negation: NegationStudy  # P1's study of "This is not a photo of {object}"
    choice: MultipleChoice  # the multiple-choice test on P2 val images
    recall_at_1: Accuracy  # image->text recall@1 on the P2 val captions

    def to_json(self) -> dict:
        return {"name": self.name, "negation": self.negation.to_json(), "choice": self.choice.to_json(),
                "recall_at_1": self.recall_at_1.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> NegationScores:
        return cls(d["name"], NegationStudy.from_json(d["negation"]), MultipleChoice.from_json(d["choice"]),
                   Accuracy.from_json(d["recall_at_1"]))


# ----------------------------------------------------------------------------------------------
# P2


@dataclass(frozen=True)
class Share:
    """A pooled share of words right over images (grounding), with its interval."""
    share: float | None  # None where no caption has such a word
    ci: Interval | None
    right: int
    total: int

    def percent(self) -> str:
        """The share as "12.3%" ("-" where there is none)."""
        return "-" if self.share is None else f"{self.share * 100:.1f}%"

    def to_json(self) -> dict:
        return {"share": self.share, "ci": None if self.ci is None else self.ci.to_json(), "right": self.right,
                "total": self.total}

    @classmethod
    def from_json(cls, d: dict) -> Share:
        return cls(d["share"], Interval.from_json(d["ci"]), d["right"], d["total"])


METRICS = ("CIDEr", "CLIPScore")  # the course evaluator's two scores


@dataclass
class VariantRow:
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

    def score(self, metric: str, n_objects: str | None = None) -> tuple[float | None, Interval | None]:
        """The value and interval of CIDEr, CLIPScore, an object metric ("exact", "recall", ...; on the
        images holding `n_objects` objects when given) or a grounding kind ("mentions", ...)."""
        if metric in METRICS:
            return getattr(self, metric), self.ci.get(metric)
        table = (self.objects_by_count or {}).get(n_objects) if n_objects else self.objects
        g = (table or {}).get(metric) or (self.grounding or {}).get(metric)
        return (None, None) if g is None else (g.share, g.ci)

    def to_json(self) -> dict:
        head = {"variant": self.variant}
        head |= {"beams": self.beams} if self.beams > 1 else {"peft": self.peft, "trainable": self.trainable}
        out = head | {"CIDEr": self.CIDEr, "CLIPScore": self.CLIPScore}
        if self.beams == 1:
            out["run"] = self.run
        out |= {f"{m}_ci": self.ci[m].to_json() for m in METRICS if m in self.ci}
        if self.grounding is not None:
            out["grounding"] = {k: g.to_json() for k, g in self.grounding.items()}
        if self.vs_reference is not None:
            out["vs_reference"] = {k: d.to_json() for k, d in self.vs_reference.items()}
        if self.objects is not None:
            out["objects"] = {k: x.to_json() for k, x in self.objects.items()}
        if self.objects_by_count is not None:
            out["objects_by_count"] = {n: {k: x.to_json() for k, x in t.items()} for n, t in self.objects_by_count.items()}
        return out

    @classmethod
    def from_json(cls, d: dict) -> VariantRow:
        g, v, o, ob = d.get("grounding"), d.get("vs_reference"), d.get("objects"), d.get("objects_by_count")
        return cls(d["variant"], d["CIDEr"], d["CLIPScore"], d.get("peft", "-"), d.get("trainable", 0), d.get("run"),
                   d.get("beams", 1), {m: Interval.from_json(d[f"{m}_ci"]) for m in METRICS if f"{m}_ci" in d},
                   None if g is None else {k: Share.from_json(x) for k, x in g.items()},
                   None if v is None else {k: Difference.from_json(x) for k, x in v.items()},
                   None if o is None else {k: Share.from_json(x) for k, x in o.items()},
                   None if ob is None else {n: {k: Share.from_json(x) for k, x in t.items()} for n, t in ob.items()})


@dataclass
class VariantTable:
    """P2's summary: every variant's row, the best one, beam search on it, the reference variant."""
    rows: list[VariantRow]
    best: VariantRow | None  # the trained variant with the highest CIDEr
    beam: VariantRow | None  # the best variant decoded with beam search
    reference: str | None  # the variant every row is compared with (the report's setting)
    tokenizer: str = "ptb"  # the CIDEr tokenizer
    decoding: list[VariantRow] = field(default_factory=list)  # the best variant under each decoding control

    def to_json(self) -> dict:
        out = {"rows": [r.to_json() for r in self.rows], "best": None if self.best is None else self.best.to_json(),
               "beam": None if self.beam is None else self.beam.to_json(), "reference": self.reference,
               "tokenizer": self.tokenizer}
        if self.decoding:
            out["decoding"] = [r.to_json() for r in self.decoding]
        return out

    @classmethod
    def from_json(cls, d: dict) -> VariantTable:
        return cls([VariantRow.from_json(r) for r in d["rows"]], d["best"] and VariantRow.from_json(d["best"]),
                   d["beam"] and VariantRow.from_json(d["beam"]), d["reference"], d.get("tokenizer", "ptb"),
                   [VariantRow.from_json(r) for r in d.get("decoding", [])])


# ----------------------------------------------------------------------------------------------
# P3


@dataclass
class Localisation:
    """Pointing game and deletion per attention method (and random maps) on the demo world's nouns."""
    nouns: int  # object nouns scored
    images: int  # captions with at least one
    pointing: dict[str, float | None]  # method -> share of nouns whose map peak is on the object
    pointing_ci: dict[str, Interval | None]  # method -> interval over images
    vs_random: dict[str, Difference]  # method -> paired difference against random maps
    pointing_by_shape: dict[str, dict[str, float]]  # shape -> {"nouns": n, method: share}
    deletion_auc: dict[str, float] | None  # method -> mean deletion score (lower is better)
    pointing_per_layer_head: list[list[float]] | None  # (L, H) pointing share of raw attention
    wrong_nouns: int = 0  # shape nouns whose mention is wrong (a repeat, or a type the image lacks)
    # method -> where a wrong noun's map peaks: "named" (an object of the word's type), "other" (another
    # object of the image), "none" (no object) - as shares of wrong_nouns
    wrong_words: dict[str, dict[str, float]] | None = None

    def to_json(self) -> dict:
        out = {"nouns": self.nouns, "images": self.images, "pointing": self.pointing,
               "pointing_ci": {m: None if c is None else c.to_json() for m, c in self.pointing_ci.items()},
               "vs_random": {m: d.to_json() for m, d in self.vs_random.items()},
               "pointing_by_shape": self.pointing_by_shape, "deletion_auc": self.deletion_auc,
               "pointing_per_layer_head": self.pointing_per_layer_head}
        if self.wrong_words is not None:
            out |= {"wrong_nouns": self.wrong_nouns, "wrong_words": self.wrong_words}
        return out

    @classmethod
    def from_json(cls, d: dict | None) -> Localisation | None:
        if d is None:
            return None
        return cls(d["nouns"], d["images"], d["pointing"], _interval_map(d.get("pointing_ci")),
                   {m: Difference.from_json(x) for m, x in (d.get("vs_random") or {}).items()},
                   d.get("pointing_by_shape") or {}, d.get("deletion_auc"), d.get("pointing_per_layer_head"),
                   d.get("wrong_nouns", 0), d.get("wrong_words"))
