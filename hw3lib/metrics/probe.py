"""Linear probes on a frozen encoder's tokens: is what the captioner must say there to be read?

If a linear read-out of the patch tokens cannot tell which colour and shape sit under each patch, or a
read-out of the image's tokens cannot tell how many objects there are, no decoder can track the objects
and the encoder is the bottleneck. If they can, the information is there and the decoder loses it.

Where things are is probed the same way (Kamath et al. 2023 find vision-language models near chance on
left / right / above / below): an object patch's row and column in the patch grid, an object's region (the
grammar's nine, `phrasing.region`) from the mean of its patches, and whether one object is left of another
from the pair's two means side by side.

Each probe is a multinomial logistic regression (standardised features, full-batch Adam, weight decay)
fitted on one set of images and scored on another; chance is the most frequent class's share of the
scored items.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..core.patches import PatchGrid
from ..core.results import ProbeRow
from ..demo.phrasing import REGIONS, region
from ..demo.world import Obj

BACKGROUND = -1


def patch_labels(objects: Sequence[Obj], side: int, n_tokens: int, vocab: Sequence[str], attr: str) -> torch.Tensor:
    """(patches,) long: the index in `vocab` of attribute `attr` ("color" / "shape") of the object that
    covers each patch (`PatchGrid.covered`; the last one where two do); BACKGROUND where none does."""
    grid = PatchGrid.of_tokens(n_tokens)
    out = torch.full((grid.patches,), BACKGROUND, dtype=torch.long)
    for o in objects:
        out[torch.from_numpy(grid.covered(o.box, (side, side)))] = vocab.index(getattr(o, attr))
    return out


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, steps: int = 300, lr: float = 0.05,
              weight_decay: float = 1e-4, seed: int = 0):
    """A linear classifier of features x (N, E) -> labels y (N,); returns predict(x) -> (N,) labels."""
    g = torch.Generator().manual_seed(seed)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    w = (torch.randn(x.shape[1], n_classes, generator=g) * 0.01).requires_grad_()
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr, weight_decay=weight_decay)
    z = (x - mean) / std
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(z @ w + b, y).backward()
        opt.step()
    w, b = w.detach(), b.detach()
    return lambda q: (((q - mean) / std) @ w + b).argmax(dim=1)


def probe(task: str, x_fit, y_fit, x_test, y_test, n_classes: int) -> ProbeRow:
    predict = fit_probe(x_fit, y_fit, n_classes)
    right = (predict(x_test) == y_test).float().mean().item()
    chance = torch.bincount(y_test, minlength=n_classes).max().item() / len(y_test)
    return ProbeRow(task, right, chance, len(y_test))


def encoder_probes(fit_tokens: torch.Tensor, fit_objects: Sequence[Sequence[Obj]], test_tokens: torch.Tensor,
                   test_objects: Sequence[Sequence[Obj]], side: int, shapes: Sequence[str], colors: Sequence[str]
                   ) -> list[ProbeRow]:
    """Probes of an encoder's tokens (N, S, E) on two sets of images with known objects: each object
    patch's colour and shape, and the image's object count from the prefix (CLS) token and from the
    mean of the patch tokens."""
    n_tokens = fit_tokens.shape[1]
    prefix = PatchGrid.of_tokens(n_tokens).prefix
    rows = []
    for attr, vocab, name in (("color", list(colors), "patch colour"), ("shape", list(shapes), "patch shape")):
        sets = []
        for tokens, objects in ((fit_tokens, fit_objects), (test_tokens, test_objects)):
            labels = torch.stack([patch_labels(o, side, n_tokens, vocab, attr) for o in objects])  # (N, P)
            keep = labels != BACKGROUND
            sets += [tokens[:, prefix:][keep].float(), labels[keep]]
        rows.append(probe(name, *sets, len(vocab)))
    counts = [torch.tensor([len(o) for o in objs]) for objs in (fit_objects, test_objects)]
    n_classes = int(max(c.max() for c in counts)) + 1
    if prefix:
        rows.append(probe("object count (CLS token)", fit_tokens[:, 0].float(), counts[0], test_tokens[:, 0].float(),
                          counts[1], n_classes))
    rows.append(probe("object count (mean of patches)", fit_tokens[:, prefix:].float().mean(1), counts[0],
                      test_tokens[:, prefix:].float().mean(1), counts[1], n_classes))
    return rows + position_probes(fit_tokens, fit_objects, test_tokens, test_objects, side)


def position_probes(fit_tokens: torch.Tensor, fit_objects: Sequence[Sequence[Obj]], test_tokens: torch.Tensor,
                    test_objects: Sequence[Sequence[Obj]], side: int) -> list[ProbeRow]:
    """Probes of where: each object patch's row and column, each object's region (from the mean of its
    patch tokens), and for each ordered pair of objects in an image whether the first is left of the second
    (from the two objects' means side by side)."""
    grid = PatchGrid.of_tokens(fit_tokens.shape[1])
    sets: dict[str, list] = {"patch row": [], "patch column": [], "object region (3 x 3)": [],
                             "pair: left of the other": []}
    for tokens, objects in ((fit_tokens, fit_objects), (test_tokens, test_objects)):
        found = _where(tokens[:, grid.prefix:].float(), objects, grid, side)
        for task, (x, y) in found.items():
            sets[task] += [x, y]
    classes = {"patch row": grid.rows, "patch column": grid.cols, "object region (3 x 3)": len(REGIONS),
               "pair: left of the other": 2}
    return [probe(task, *xy, classes[task]) for task, xy in sets.items() if len(xy[1]) and len(xy[3])]


def _where(patches: torch.Tensor, objects: Sequence[Sequence[Obj]], grid: PatchGrid, side: int) -> dict:
    """(features, labels) of each position probe on one set of images; patches (N, P, E)."""
    rows, cols, regions, pairs = [], [], [], []
    for n, objs in enumerate(objects):
        means = []
        for o in objs:  # every object covers at least one patch (`PatchGrid.covered`)
            covered = torch.from_numpy(grid.covered(o.box, (side, side)))
            idx = covered.nonzero().flatten()
            rows += [(patches[n, i], int(i) // grid.cols) for i in idx]
            cols += [(patches[n, i], int(i) % grid.cols) for i in idx]
            means.append(patches[n, covered].mean(0))
            regions.append((means[-1], REGIONS.index(region(o, side))))
        for a, b in ((a, b) for a in range(len(objs)) for b in range(len(objs)) if a != b):
            if objs[a].center[0] != objs[b].center[0]:
                pairs.append((torch.cat([means[a], means[b]]), int(objs[a].center[0] < objs[b].center[0])))
    out = {}
    for task, items in (("patch row", rows), ("patch column", cols), ("object region (3 x 3)", regions),
                        ("pair: left of the other", pairs)):
        x = torch.stack([f for f, _ in items]) if items else torch.empty(0)
        out[task] = (x, torch.tensor([label for _, label in items], dtype=torch.long))
    return out
