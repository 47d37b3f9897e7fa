"""Scores of one set of val captions: the course evaluator (CIDEr-D, CLIPScore), the objects they name on
the demo world, bootstrap intervals and paired differences; the encoder probes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.data import read_caption_file
from ..core.images import list_images, open_image
from ..core.results import METRICS, Share, Statements, VariantRow
from ..demo.world import DemoWorld, boxes_for
from ..metrics import stats
from ..metrics.captions import CaptionScores, evaluate, java_available
from ..metrics.grounding import Grounding, grounding
from ..metrics.objects import HEADLINE as OBJECT_HEADLINE
from ..metrics.objects import ObjectCounts, object_counts
from ..metrics.probe import encoder_probes
from ..metrics.relations import RelationCounts, relation_counts, spatial_counts
from ..models.decoding import OFF, Controls, Decoding
from ..models.loading import encoder_transform, load_clip
from ..training.loop import image_side
from .runs import caption_folder, load_run, manifest_for


def default_tokenizer() -> str:
    """The course's PTB tokenizer where Java is installed, else the Java-free equivalent."""
    return "ptb" if java_available() else "python"


def evaluate_predictions(preds, p2_dir, split="val", manifest=None, device="cpu", tokenizer=None, clip=None
                         ) -> CaptionScores:
    p2_dir = Path(p2_dir)
    cs = read_caption_file(p2_dir / f"{split}.json", p2_dir / "images" / split)
    if clip is None and manifest is not None:
        clip = load_clip(manifest.clip, device)
    return evaluate(preds, cs, clip, tokenizer or default_tokenizer(), device=device)


@dataclass(frozen=True)
class Extremes:
    """Val captions scored by the course evaluator, with the best and the worst by CLIPScore."""
    predictions: dict[str, str]  # image key -> caption
    clipscores: dict[str, float]  # image key -> its CLIPScore
    paths: dict[str, Path]  # image key -> image file
    top: str  # the key of the highest CLIPScore ("top-1")
    last: str  # and of the lowest ("last-1")


def clipscore_extremes(model, manifest, p2_dir, limit: int | None = None, device="cpu", clip=None,
                       controls: Controls = OFF) -> Extremes:
    """Caption the val images (the first `limit` by name), score the captions as the course's evaluator
    does, and name the best and the worst caption by CLIPScore."""
    p2_dir = Path(p2_dir)
    paths = list_images(p2_dir / "images" / "val")[:limit]
    preds = caption_folder(model, manifest, paths, Decoding(controls=controls), device, progress=False)
    cs = read_caption_file(p2_dir / "val.json", p2_dir / "images" / "val").subset(preds)
    scores = evaluate(preds, cs, clip or load_clip(manifest.clip, device), default_tokenizer(), device=device)
    clipscores = {k: v.CLIPScore for k, v in scores.per_image.items()}
    ranked = sorted(clipscores, key=clipscores.__getitem__)
    return Extremes(preds, clipscores, {p.stem: p for p in paths}, ranked[-1], ranked[0])


@dataclass(frozen=True)
class Scores:
    """Everything P2 reports about one set of val captions."""
    CIDEr: float  # CIDEr-D (the course evaluator)
    CLIPScore: float
    per_image: dict[str, np.ndarray]  # metric of METRICS -> (N,) per image, in sorted key order
    grounding: Grounding | None = None  # the demo world's objects (None on real data)
    objects: ObjectCounts | None = None
    relations: RelationCounts | None = None
    spatial: dict[str, RelationCounts] | None = None  # each relation word and "region" apart


def score_predictions(preds: dict[str, str], p2_dir, manifest, clip, device="cpu", world: DemoWorld | None = None
                      ) -> Scores:
    """Score one set of val captions: the course evaluator, per-image arrays for the intervals, and the
    object metrics where the demo world's objects are known (`world`)."""
    res = evaluate_predictions(preds, p2_dir, manifest=manifest, device=device, clip=clip)
    keys = sorted(res.per_image)
    per_image = {m: np.array([getattr(res.per_image[k], m) for k in keys]) for m in METRICS}
    if world is None:
        return Scores(res.CIDEr, res.CLIPScore, per_image)
    boxes, shapes, colors = world.objects("p2_data"), list(world.shapes), list(world.colors)
    return Scores(res.CIDEr, res.CLIPScore, per_image, grounding(preds, boxes, shapes, colors),
                  object_counts(preds, boxes, shapes, colors), relation_counts(preds, boxes, shapes, colors),
                  spatial_counts(preds, boxes, shapes, colors, world.side))


def with_intervals(row: VariantRow, scored: Scores, reference: Scores | None, n_boot: int = 2000) -> VariantRow:
    """`row` with 95% bootstrap intervals over images (CIDEr, CLIPScore, grounding shares) and, when a
    reference variant's scores are given, paired bootstrap differences against it on the same images."""
    row = dataclasses.replace(row, ci={m: stats.bootstrap_ci(scored.per_image[m], n_boot=n_boot) for m in METRICS})
    g, oc = scored.grounding, scored.objects
    if g is not None:
        row.grounding = g.summary(n_boot=n_boot)
    if oc is not None:
        row.objects, row.objects_by_count = oc.summary(n_boot=n_boot), oc.by_object_count(n_boot=n_boot)
    rc = scored.relations
    if rc is not None and rc.checkable.sum() > 0:
        row.relations = Share(rc.accuracy, stats.bootstrap_ci(rc.true, rc.checkable, n_boot=n_boot), int(rc.true.sum()),
                              int(rc.checkable.sum()))
    if scored.spatial is not None:
        row.spatial = {kind: statements(c, n_boot) for kind, c in scored.spatial.items()}
    if reference is not None and reference is not scored:
        paired = {m: stats.paired_bootstrap(reference.per_image[m], scored.per_image[m], n_boot=n_boot)
                  for m in METRICS}
        ro = reference.objects
        if oc is not None and ro is not None:
            for m in OBJECT_HEADLINE:
                (na, da), (nb, db) = ro.ratio(m), oc.ratio(m)
                if da.sum() > 0 and db.sum() > 0:  # (a model that names nothing has no precision)
                    paired[m] = stats.paired_bootstrap(na, nb, da, db, n_boot=n_boot)
        rg = reference.grounding
        if g is not None and rg is not None and g.share("mentions") is not None and rg.share("mentions") is not None:
            paired["mentions"] = stats.paired_bootstrap(rg.right["mentions"], g.right["mentions"], rg.total["mentions"],
                                                        g.total["mentions"], n_boot=n_boot)
        rr = reference.relations
        if rc is not None and rr is not None and rc.checkable.sum() > 0 and rr.checkable.sum() > 0:
            paired["relations"] = stats.paired_bootstrap(rr.true, rc.true, rr.checkable, rc.checkable, n_boot=n_boot)
        row.vs_reference = {m: d.reported() for m, d in paired.items()}
    return row


def statements(c: RelationCounts, n_boot: int = 2000) -> Statements:
    """One kind of spatial statement over a row's captions, with its interval over images."""
    checkable = int(c.checkable.sum())
    return Statements(int(c.stated.sum()), checkable, int(c.true.sum()), c.accuracy,
                      stats.bootstrap_ci(c.true, c.checkable, n_boot=n_boot) if checkable else None)


def probe_encoder(assets, data_dir, world: DemoWorld, n_fit: int = 1000, device="cpu", name: str | None = None
                  ) -> list:
    """Linear probes of the frozen encoder's tokens (`metrics.probe`): fitted on the first `n_fit`
    training images, scored on the val images; each row names the encoder `name` where given."""
    m = manifest_for(assets, parts=("encoder", "decoder", "tokenizer"))
    model = load_run(None, m, device)
    tf = encoder_transform(model.encoder)
    boxes = world.objects("p2_data")
    tokens, objects = [], []
    for split, limit in (("train", n_fit), ("val", None)):
        paths = list_images(Path(data_dir) / "p2_data" / "images" / split)[:limit]
        feats = [model.encode(torch.stack([tf(open_image(p)) for p in paths[i:i + 64]]).to(device)).cpu()
                 for i in range(0, len(paths), 64)]
        tokens.append(torch.cat(feats))
        objects.append([boxes_for(p.name, boxes, split) for p in paths])
    side = image_side(paths[0])
    rows = encoder_probes(tokens[0], objects[0], tokens[1], objects[1], side, world.shapes, world.colors)
    return [dataclasses.replace(r, encoder=name) for r in rows]
