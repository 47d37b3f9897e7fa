"""P1: CLIP zero-shot classification and the statistics of a prompt study.

The expensive part (encoding images) happens once per study; every template, ensemble or selection is
then a matrix product over cached, normalised features:

    study = ZeroShotStudy.from_folder(clip, image_dir, id2label)       # images encoded once
    text = study.text_features(templates)                               # (T, C, D), one per template
    logits = study.logits(ensemble(text))                               # (N, C)
    accuracy(logits, study.labels), stats.bootstrap_ci(...), stats.paired_test(...)
    negation_study(study, "This is a photo of {object}", "This is not a photo of {object}")
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.data import P1Dataset, read_p1_folder
from ..core.errors import HW3Error
from ..core.files import atomic_path
from ..core.images import check_images
from ..core.results import (
    Accuracy,
    FramingRow,
    FrequencyStudy,
    NegationStudy,
    PromptRow,
    PromptStudy,
    PromptTest,
    Selection,
)
from ..demo.pretraining_text import UNSEEN_FRAMINGS, PretrainingText
from ..metrics.stats import bootstrap_ci, paired_test, spearman
from ..models.clip import encode_images, encode_texts
from ..models.loading import ClipBundle
from .templates import check_template, fill

# ----------------------------------------------------------------------------------------------
# text features


def text_features(clip: ClipBundle, class_names: list[str], templates: list[str], device="cpu",
                  batch_size: int = 256) -> torch.Tensor:
    """Per-template class embeddings (T, C, D), each row normalised; all prompts in few batches."""
    for t in templates:
        check_template(t)
    texts = [fill(t, c) for t in templates for c in class_names]
    feats = encode_texts(clip, texts, batch_size, device)
    return feats.view(len(templates), len(class_names), -1)


def ensemble(per_template: torch.Tensor, subset: list[int] | None = None) -> torch.Tensor:
    """Classifier weights (C, D): mean of the normalised per-template embeddings, renormalised."""
    x = per_template if subset is None else per_template[subset]
    w = x.mean(dim=0)
    return w / w.norm(dim=-1, keepdim=True)


def build_classifier(clip: ClipBundle, class_names: list[str], templates: list[str], device="cpu") -> torch.Tensor:
    """Zero-shot classifier weights (D, C), the layout of open_clip's build_zero_shot_classifier."""
    return ensemble(text_features(clip, class_names, templates, device)).T.contiguous()


# ----------------------------------------------------------------------------------------------
# a study


@dataclass
class ZeroShotStudy:
    image_features: torch.Tensor  # (N, D) normalised, encoded once
    labels: np.ndarray | None  # (N,) class index (position in class_names), None if unlabelled
    class_names: list[str]  # C names
    class_ids: list[int]  # C ids (the CSV's label column)
    paths: list[Path]  # N image files
    clip: ClipBundle  # the model, for text features
    device: str = "cpu"

    @classmethod
    def from_dataset(cls, clip: ClipBundle, ds: P1Dataset, device="cpu", batch_size=64, skip_bad=False,
                     checked: list[Path] | None = None):
        """The study of `ds`'s images (`checked`: those whose headers the caller has read, `check_images`)."""
        kept = checked if checked is not None else check_images([s.path for s in ds.samples], skip_bad=skip_bad)
        by_path = {s.path: s for s in ds.samples}
        index = {cid: i for i, cid in enumerate(ds.class_ids)}
        labels = None
        if all(by_path[p].class_id is not None for p in kept):
            labels = np.array([index[by_path[p].class_id] for p in kept])
        feats = encode_images(clip, kept, batch_size, device)  # decoded a batch at a time
        return cls(feats, labels, ds.class_names, ds.class_ids, kept, clip, device)

    @classmethod
    def from_folder(cls, clip, image_dir, id2label, device="cpu", batch_size=64, skip_bad=False, labelled=True):
        return cls.from_dataset(clip, read_p1_folder(image_dir, id2label, labelled=labelled), device, batch_size,
                                skip_bad)

    def text_features(self, templates: list[str]) -> torch.Tensor:
        return text_features(self.clip, self.class_names, list(templates), self.device)

    def with_clip(self, clip: ClipBundle) -> ZeroShotStudy:
        """The same images and labels seen by another CLIP (its images encoded again; self if the same)."""
        if clip is self.clip:
            return self
        return dataclasses.replace(self, image_features=encode_images(clip, self.paths, device=self.device), clip=clip)

    def logits(self, weights: torch.Tensor) -> torch.Tensor:
        """Cosine similarities (N, C) against classifier weights (C, D)."""
        return self.image_features @ weights.T

    def predict(self, weights: torch.Tensor) -> np.ndarray:
        return self.logits(weights).argmax(dim=1).numpy()

    def predict_each(self, per_template: torch.Tensor) -> np.ndarray:
        """(T, N) predictions of each template alone, from per-template class embeddings (T, C, D)."""
        return torch.einsum("nd,tcd->tnc", self.image_features, per_template).argmax(dim=2).numpy()

    def require_labels(self) -> np.ndarray:
        if self.labels is None:
            raise HW3Error("these images carry no class ids in their names; accuracy needs {class_id}_{id}.png")
        return self.labels


# ----------------------------------------------------------------------------------------------
# metrics


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(pred) == np.asarray(labels)).mean())


def topk_accuracy(logits: torch.Tensor, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices.numpy()
    return float((top == np.asarray(labels)[:, None]).any(axis=1).mean())


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts; rows are true classes, columns predicted."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(pred)), 1)
    return cm


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    cm = confusion_matrix(pred, labels, n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(cm) / cm.sum(axis=1)


def per_template_accuracy(study: ZeroShotStudy, per_template: torch.Tensor) -> np.ndarray:
    """Accuracy (T,) of each template alone; one batched product for all of them."""
    return (study.predict_each(per_template) == study.require_labels()[None]).mean(axis=1)


def greedy_selection(study: ZeroShotStudy, per_template: torch.Tensor, select_idx: np.ndarray,
                     max_templates: int = 10) -> list[int]:
    """Forward selection of templates by ensemble accuracy on `select_idx` images (the CLIP authors'
    procedure). Evaluate the result on other images: selecting and scoring on the same ones overfits."""
    labels = study.require_labels()[select_idx]
    feats = study.image_features[select_idx]
    chosen: list[int] = []
    best = -1.0
    while len(chosen) < min(max_templates, len(per_template)):
        scores = []
        for t in range(len(per_template)):
            if t in chosen:
                scores.append(-1.0)
                continue
            w = ensemble(per_template, chosen + [t])
            scores.append(accuracy((feats @ w.T).argmax(1).numpy(), labels))
        t_best = int(np.argmax(scores))
        if scores[t_best] <= best:
            break
        chosen.append(t_best)
        best = scores[t_best]
    return chosen


def top_probabilities(study: ZeroShotStudy, weights: torch.Tensor, indices: list[int], k: int = 5,
                      temperature: float = 100.0) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for chosen images; CLIP's logit scale 100 by default."""
    probs = (temperature * study.logits(weights)[indices]).softmax(dim=1)
    top = probs.topk(min(k, probs.shape[1]), dim=1)
    return [[(study.class_names[j], float(p)) for p, j in zip(ps, js, strict=True)]
            for ps, js in zip(top.values.tolist(), top.indices.tolist(), strict=True)]


def negation_study(study: ZeroShotStudy, positive: str, negated: str, n_boot: int = 2000,
                   seed: int = 0, features: torch.Tensor | None = None) -> NegationStudy:
    """Does the text tower read "not"? For a positive prompt and its negation:
    - per class, the cosine similarity of the two prompts' text embeddings (1.0: "not" is ignored);
    - how often the two prompts predict the same class for an image;
    - the accuracy of each prompt, and of the negated prompt read inverted (the class it scores *lowest*),
      with 95% bootstrap intervals. If "not" were understood, the inverted reading would be the good one.
    `features` (2, C, D) replaces the two prompts' class embeddings (an inference-time negation rule)."""
    labels = study.require_labels()
    feats = study.text_features([positive, negated]) if features is None else features  # (2, C, D)
    cos = (feats[0] * feats[1]).sum(-1).numpy()  # (C,)
    pos_logits, neg_logits = study.logits(feats[0]), study.logits(feats[1])  # (N, C) each
    pos, neg, inv = pos_logits.argmax(1).numpy(), neg_logits.argmax(1).numpy(), neg_logits.argmin(1).numpy()

    def acc(pred) -> Accuracy:
        ok = pred == labels
        return Accuracy(float(ok.mean()), bootstrap_ci(ok, n_boot=n_boot, seed=seed))

    same = pos == neg
    return NegationStudy(
        positive, negated, list(study.class_names), cos.tolist(), float(cos.mean()), float(same.mean()),
        bootstrap_ci(same, n_boot=n_boot, seed=seed),
        [float(same[labels == c].mean()) if (labels == c).any() else None for c in range(len(study.class_names))],
        acc(pos), acc(neg), acc(inv), paired_test(pos == labels, neg == labels, n_boot, seed),
        1.0 / len(study.class_names))


# ----------------------------------------------------------------------------------------------
# output


def write_predictions_csv(path: str | os.PathLike, paths: list[Path], class_ids: list[int]) -> None:
    """The course's `filename,label` CSV, written atomically (never half a file)."""
    import csv

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")  # quotes names with commas, quotes or line breaks
        w.writerow(["filename", "label"])
        w.writerows([p.name, cid] for p, cid in zip(paths, class_ids, strict=True))


# ----------------------------------------------------------------------------------------------
# the report's study in one call (the notebook plots what this returns)


def prompt_study(study: ZeroShotStudy, prompts: list[str], sets: dict[str, list[str]], n_boot: int = 2000,
                 seed: int = 0) -> PromptStudy:
    """Accuracy with bootstrap intervals for single prompts and named ensembles, paired tests of
    every prompt against the first, and greedy template selection (chosen on half of the images,
    scored on the other half). Text features are computed once per distinct template."""
    labels = study.require_labels()
    all_templates = list(dict.fromkeys(prompts + [t for ts in sets.values() for t in ts]))
    feats = study.text_features(all_templates)
    pos = {t: i for i, t in enumerate(all_templates)}
    rows, correct = [], {}
    entries = [(p, [p]) for p in prompts] + [(f"ensemble: {name} ({len(ts)})", ts) for name, ts in sets.items()]
    for name, ts in entries:
        pred = study.predict(ensemble(feats, [pos[t] for t in ts]))
        ok = pred == labels
        correct[name] = ok
        rows.append(PromptRow(name, len(ts), float(ok.mean()), bootstrap_ci(ok, n_boot=n_boot, seed=seed)))
    first = prompts[0]
    tests = [PromptTest(first, p, paired_test(correct[first], correct[p], n_boot, seed)) for p in prompts[1:]]

    # selection: choose on even-indexed images, score on odd-indexed ones (disjoint halves)
    idx = np.arange(len(labels))
    sel, held = idx[0::2], idx[1::2]
    pool = list(dict.fromkeys(t for ts in sets.values() for t in ts)) or prompts
    pool_feats = feats[[pos[t] for t in pool]]
    chosen = greedy_selection(study, pool_feats, sel)
    held_feats, held_labels = study.image_features[held], labels[held]

    def held_acc(subset):
        return accuracy((held_feats @ ensemble(pool_feats, subset).T).argmax(1).numpy(), held_labels)

    singles = per_template_accuracy(study, pool_feats)
    best_on_choosing_half = int(np.argmax(per_template_accuracy(
        ZeroShotStudy(study.image_features[sel], labels[sel], study.class_names, study.class_ids, [], study.clip),
        pool_feats)))
    selection = Selection(len(pool), [pool[i] for i in chosen], held_acc(chosen), held_acc(list(range(len(pool)))),
                          held_acc([best_on_choosing_half]),
                          {t: float(a) for t, a in zip(pool, singles, strict=True)})
    best = max((r for r in rows if r.templates == 1), key=lambda r: r.accuracy).prompt
    return PromptStudy(rows, tests, selection, int(len(labels)), 1.0 / len(study.class_names), best)


# ----------------------------------------------------------------------------------------------
# prompts against the pretraining text (demo world: the text is known)


def frequency_study(study: ZeroShotStudy, text: PretrainingText, report_prompts: list[str], templates: list[str],
                    n_boot: int = 2000, seed: int = 0) -> FrequencyStudy:
    """Accuracy of every framing of the CLIP's pretraining text (and of framings it never read) as a
    prompt, against how often the framing occurred; and of the report's prompts and `templates` against
    how often their words occurred (`PretrainingText.word_frequency`). Spearman correlations for both."""
    labels = study.require_labels()
    framings = [f.replace("{}", "{object}") for f in [*text.framings, *UNSEEN_FRAMINGS]]
    prompts = list(dict.fromkeys([*report_prompts, *templates]))
    everything = list(dict.fromkeys(framings + prompts))
    ok = study.predict_each(study.text_features(everything)) == labels[None]  # (T, N)
    by = dict(zip(everything, ok, strict=True))

    def row(t: str) -> FramingRow:
        return FramingRow(t, text.frequency(t.replace("{object}", "{}")), text.word_frequency(t), text.unseen_words(t),
                          Accuracy(float(by[t].mean()), bootstrap_ci(by[t], n_boot=n_boot, seed=seed)))

    f_rows, t_rows = [row(t) for t in framings], [row(t) for t in prompts]
    return FrequencyStudy(f_rows, t_rows,
                          spearman([r.frequency for r in f_rows], [r.accuracy.accuracy for r in f_rows]),
                          spearman([r.word_frequency for r in t_rows], [r.accuracy.accuracy for r in t_rows]),
                          len(list(dict.fromkeys(report_prompts))))
