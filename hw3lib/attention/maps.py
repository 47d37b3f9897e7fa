"""P3: where the decoder looks for each generated word.

Three kinds of map per generated token (the end token included), each a distribution over the
encoder's patch grid (prefix tokens such as CLS dropped, rows renormalised to sum to 1):

  raw        cross-attention of the query that produced the token; choose layers and heads or
             aggregate them (mean / max; "last" layer averaged over heads is the common choice)
  rollout    raw cross-attention carried back through the frozen ViT's self-attention
             (attention rollout, Abnar & Zuidema 2020: R = prod_l (I + A_l) / 2, heads averaged),
             so encoder tokens that mix many patches spread their weight onto them
  relevance  gradient-weighted cross-attention (Chefer et al., 2021): per layer
             E_heads[(dA ⊙ A)^+] for the gradient of the token's logit, summed over layers. The
             decoder self-attention term of their update rule is left out (captions are short and
             that term mostly re-weights tokens, not patches).

Localisation on the demo world (its boxes): for object-noun tokens, the pointing game (is the map's
most attended patch one the named object covers: `core.patches`, the rule the training curves use too) and a deletion score (the token's probability
as the most-attended patches are blanked, area under that curve: lower = the map found what matters),
each against a random map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..core.errors import HW3Error
from ..core.images import open_image
from ..core.patches import PatchGrid, points_at
from ..core.progress import progress
from ..core.results import Localisation
from ..demo.phrasing import token_mentions
from ..demo.world import DemoWorld, Obj, boxes_for
from ..metrics import stats
from ..models.decoding import OFF, Controls, Search, beam_search

# ----------------------------------------------------------------------------------------------
# capture



METHODS = ("raw", "rollout", "relevance")  # how a token's map is made (`method_maps`)

@dataclass
class CaptionAttention:
    path: Path  # the image
    caption: str  # decoded caption
    token_ids: list[int]  # generated ids, the end token included when the caption finished
    token_texts: list[str]  # their readable texts
    attention: torch.Tensor  # (T, L, H, S) raw cross-attention over all encoder tokens
    feats: torch.Tensor  # (S, E) encoder tokens (for rollout / relevance / deletion)
    pixels: torch.Tensor  # (3, h, w) the encoder's input
    grid: tuple[int, int]  # patch grid (rows, cols)
    n_prefix: int  # encoder tokens before the patches (CLS, registers)
    eot_id: int  # the tokenizer's end token, which also starts every caption
    extra: dict = field(default_factory=dict)


@torch.no_grad()
def capture(model, tokenizer, transform, paths, beams: int = 1, max_len: int = 60, device="cpu",
            controls: Controls = OFF) -> list[CaptionAttention]:
    """Caption images with attention capture on (greedy, or beam search following the final beam), with
    the decoding `controls`."""
    layout = PatchGrid.of_encoder(model.encoder)
    out = []
    for p in progress(paths, desc="attention capture", leave=False, shown=len(paths) >= 2):
        x = transform(open_image(p))[None].to(device)
        feats = model.encode(x)
        res = beam_search(model, feats, tokenizer.eot_id, beams, max_len, controls=controls, search=Search(capture=True))
        ids = res.tokens[0] + ([tokenizer.eot_id] if res.finished[0] else [])
        texts = [tokenizer.id_to_token_text(i) for i in ids]
        out.append(CaptionAttention(Path(p), tokenizer.decode(res.tokens[0]).strip(), ids, texts,
                                    res.attentions[0].float(), feats[0].cpu(), x[0].cpu(),
                                    (layout.rows, layout.cols), layout.prefix,
                                    tokenizer.eot_id))
    return out


# ----------------------------------------------------------------------------------------------
# aggregation and maps


def check_layers_heads(layers, heads, n_layer: int, n_head: int) -> None:
    """Layer and head indices must exist (negative ones count from the end); never wrap round."""
    for what, sel, n in (("layers", layers, n_layer), ("heads", heads, n_head)):
        idx = [sel] if isinstance(sel, int) else sel if isinstance(sel, list) else []
        bad = [i for i in idx if not -n <= int(i) < n]
        if bad:
            raise HW3Error(f"--{what}: no {what[:-1]} {bad[0]} (there are {n}: 0..{n - 1}, or -1 for the last)")


def select(att: torch.Tensor, layers="last", heads="mean") -> torch.Tensor:
    """(T, L, H, S) -> (T, S): layers = "last" | "all" | int | list | slice (a range);
    heads = "mean" | "max" | int | list (averaged)."""
    L = att.shape[1]
    check_layers_heads(layers, heads, L, att.shape[2])
    if layers == "last":
        idx = [L - 1]
    elif layers == "all":
        idx = list(range(L))
    elif isinstance(layers, int):
        idx = [layers % L]
    elif isinstance(layers, slice):
        idx = list(range(L))[layers]
    else:
        idx = [int(i) % L for i in layers]
    a = att[:, idx]  # (T, l, H, S)
    if heads == "mean":
        a = a.mean(dim=2)
    elif heads == "max":
        a = a.max(dim=2).values
    else:
        hidx = [heads] if isinstance(heads, int) else list(heads)
        a = a[:, :, hidx].mean(dim=2)
    return a.mean(dim=1)  # (T, S)


def patch_distribution(maps: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """Drop prefix tokens and renormalise each row to a distribution over patches: (T, P)."""
    m = maps[:, n_prefix:].clamp_min(0)
    return m / m.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def to_grid(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    return maps.reshape(maps.shape[0], *grid)  # (T, rows, cols)


def upsample(grid_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, rows, cols) -> (T, H, W) bilinear, for overlays and peak finding."""
    return F.interpolate(grid_maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def normalise(m: np.ndarray) -> np.ndarray:
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def overlay(image: Image.Image, heat: np.ndarray, cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 image with a colour-mapped heat map (H, W in [0, 1]) blended on top."""
    import matplotlib

    rgb = np.asarray(image.convert("RGB").resize((heat.shape[1], heat.shape[0]), Image.BILINEAR), dtype=np.float32)
    colored = matplotlib.colormaps[cmap](heat)[..., :3] * 255
    return (rgb * (1 - alpha) + colored * alpha).clip(0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# rollout through the encoder, and gradient relevance


@torch.no_grad()
def encoder_rollout(encoder, pixels: torch.Tensor) -> torch.Tensor:
    """Attention rollout of a timm ViT for one image: (S, S), row i = input-token mixture of token i."""
    attn_maps = []

    def hook(mod, args, _out):
        x = args[0]
        B, N, C = x.shape
        qkv = mod.qkv(x).reshape(B, N, 3, mod.num_heads, C // mod.num_heads).permute(2, 0, 3, 1, 4)
        q, k = mod.q_norm(qkv[0]), mod.k_norm(qkv[1])
        attn_maps.append(((q * mod.scale) @ k.transpose(-2, -1)).softmax(-1).mean(dim=1)[0])  # (N, N)

    handles = [blk.attn.register_forward_hook(hook) for blk in encoder.blocks]
    try:
        encoder.forward_features(pixels[None])
    finally:
        for h in handles:
            h.remove()
    S = attn_maps[0].shape[0]
    R = torch.eye(S)
    for A in attn_maps:
        A = 0.5 * A + 0.5 * torch.eye(S)
        R = (A / A.sum(-1, keepdim=True)) @ R
    return R


def rollout_maps(model, ca: CaptionAttention, layers="last", heads="mean") -> torch.Tensor:
    """Raw cross-attention carried back to input patches through the encoder's rollout: (T, S)."""
    R = encoder_rollout(model.encoder, ca.pixels)
    return select(ca.attention, layers, heads) @ R


def relevance_maps(model, ca: CaptionAttention) -> torch.Tensor:
    """Gradient-weighted cross-attention summed over layers, one backward pass per token: (T, S)."""
    ids = torch.tensor([[ca.eot_id] + ca.token_ids[:-1]])  # [start, tokens...] (start = end token)
    out = []
    feats = ca.feats[None]
    for t, target in enumerate(ca.token_ids):
        with torch.enable_grad():
            logits, atts = model(feats, ids[:, : t + 1], need_weights=True)
            for a in atts:
                a.retain_grad()
            logits[0, t, target].backward()
        rel = sum((a.grad[0, :, t] * a[0, :, t]).clamp_min(0).mean(dim=0) for a in atts)  # (S,)
        out.append(rel.detach())
        model.zero_grad(set_to_none=True)
    return torch.stack(out)


def method_maps(model, ca: CaptionAttention, method: str, layers="last", heads="mean") -> torch.Tensor:
    """(T, P) patch distributions for one of `METHODS`."""
    if method == "raw":
        m = select(ca.attention, layers, heads)
    elif method == "rollout":
        m = rollout_maps(model, ca, layers, heads)
    elif method == "relevance":
        m = relevance_maps(model, ca)
    else:
        raise ValueError(f"unknown attention method {method!r} ({', '.join(METHODS)})")
    return patch_distribution(m, ca.n_prefix)


def display_maps(ca: CaptionAttention, maps: torch.Tensor, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Per token: a (H, W) map in [0, 1] at image size, for overlays."""
    im = open_image(ca.path)
    size = size or (im.height, im.width)
    up = upsample(to_grid(maps, ca.grid), size).numpy()
    return [normalise(m) for m in up]


# ----------------------------------------------------------------------------------------------
# localisation on the demo world


def _noun_boxes(ca: CaptionAttention, objects: Sequence[Obj], shapes: list[str], colors: list[str]):
    """(token index, shape, boxes of objects it can name) for the tokens that end a shape noun present
    in the image. The colour the caption gives it (before it, or "coloured <colour>" after it: the one
    reading of mentions, `demo.phrasing`) narrows the boxes to objects of that colour."""
    out = []
    for i, m in token_mentions(ca.token_texts, shapes, colors):
        cands = [o for o in objects if o.shape == m.shape]
        if m.color is not None:
            cands = [o for o in cands if o.color == m.color] or cands
        if cands:
            out.append((i, m.shape, [o.box for o in cands]))
    return out


def _wrong_nouns(ca: CaptionAttention, objects: Sequence[Obj], colors: list[str], shapes: list[str]):
    """(token index, boxes of objects of the word's type, boxes of the image's other objects) for the
    shape nouns whose mention is wrong: a repeat of an object already named, or a type the image does
    not hold (`objects.match`)."""
    from ..metrics.objects import match

    found = token_mentions(ca.token_texts, shapes, colors)
    out = []
    for (i, m), fate in zip(found, match([m for _, m in found], objects), strict=True):
        if fate != "matched":
            kind = [o for o in objects if o.shape == m.shape and m.color in (None, o.color)]
            out.append((i, [o.box for o in kind], [o.box for o in objects if o not in kind]))
    return out


def _covers(grid: PatchGrid, boxes, size: tuple[int, int]) -> torch.Tensor:
    """(P,) bool: the patches any of `boxes` covers (`PatchGrid.covered`)."""
    out = np.zeros(grid.patches, dtype=bool)
    for b in boxes:
        out |= grid.covered(b, size)
    return torch.from_numpy(out)


@torch.no_grad()
def deletion_auc(model, ca: CaptionAttention, t: int, patch_map: np.ndarray, fractions=(0, .1, .2, .3, .5)) -> float:
    """Mean probability of token t as the top-attended patches are replaced by the image mean
    (lower = the map pointed at what the token needs)."""
    rows, cols = ca.grid
    ph, pw = ca.pixels.shape[1] // rows, ca.pixels.shape[2] // cols
    order = np.argsort(-patch_map)
    images = []
    for f in fractions:
        x = ca.pixels.clone()
        fill = x.mean(dim=(1, 2), keepdim=True)
        for p in order[: int(round(f * len(order)))]:
            r, c = divmod(int(p), cols)
            x[:, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = fill
        images.append(x)
    ids = torch.tensor([[ca.eot_id] + ca.token_ids[:t]]).expand(len(images), -1)  # (F, t + 1): one row per fraction
    logits = model(model.encode(torch.stack(images)), ids)  # every fraction in one pass: (F, t + 1, V)
    probs = logits[:, -1].softmax(-1)[:, ca.token_ids[t]]
    return float(np.mean(probs.tolist()))


@dataclass
class _Tally:
    """What `localisation` counts as it goes over the captions."""
    names: tuple[str, ...]  # the methods and "random"
    shapes: list[str]
    hits: dict = field(default_factory=dict)  # method -> per image, nouns the map points at
    dels: dict = field(default_factory=dict)  # method -> deletion score per noun
    counts: list = field(default_factory=list)  # per image, nouns scored
    by_shape: dict = field(default_factory=dict)  # shape -> {method: hits, "nouns": n}
    wrong: dict = field(default_factory=dict)  # method -> {"named" | "other" | "none": wrong nouns}
    n_wrong: int = 0
    per_head: object = 0.0  # (L, H) hits of each raw layer and head

    def __post_init__(self):
        self.hits = {m: [] for m in self.names}
        self.dels = {m: [] for m in self.names}
        self.by_shape = {sh: {m: 0 for m in (*self.names, "nouns")} for sh in self.shapes}
        self.wrong = {m: {"named": 0, "other": 0, "none": 0} for m in self.names if m != "random"}


def localisation(model, captures: list[CaptionAttention], world: DemoWorld, methods=METHODS, seed: int = 0,
                 deletion: bool = True, n_boot: int = 2000) -> Localisation:
    """The pointing game (`patches.points_at`, on patches) and the deletion score per method on the nouns
    of captions of the demo world's P2 images, a random-map baseline, pointing per shape and per (layer,
    head) of raw attention, and where the maps of wrong nouns peak. Intervals resample images
    (stats.bootstrap_ci), and each method is compared with random maps on the same nouns (paired bootstrap)."""
    rng = np.random.default_rng(seed)
    boxes, shapes, colors = world.objects("p2_data"), list(world.shapes), list(world.colors)
    tally = _Tally((*methods, "random"), shapes)
    for ca in progress(captures, desc="localisation", leave=False, shown=len(captures) >= 2):
        objects = boxes_for(ca.path.name, boxes, default=[])
        nouns, bad = _noun_boxes(ca, objects, shapes, colors), _wrong_nouns(ca, objects, colors, shapes)
        if nouns or bad:
            _score_caption(model, ca, nouns, bad, methods, rng, deletion, tally)
    return _localisation_record(tally, methods, seed, n_boot)


def _score_caption(model, ca: CaptionAttention, nouns, bad, methods, rng, deletion: bool, t: _Tally) -> None:
    """Add one caption's nouns (and wrong nouns) to the tally."""
    im = open_image(ca.path)
    size, grid = (im.height, im.width), PatchGrid(*ca.grid, ca.n_prefix)
    maps = {m: method_maps(model, ca, m) for m in methods}  # (T, P) each
    for tok, named, other in bad:
        t.n_wrong += 1
        for m in methods:
            where = ("named" if points_at(maps[m][tok], _covers(grid, named, size)) else
                     "other" if points_at(maps[m][tok], _covers(grid, other, size)) else "none")
            t.wrong[m][where] += 1
    if not nouns:
        return
    maps["random"] = torch.from_numpy(rng.random((len(ca.token_ids), grid.patches))).float()
    t.counts.append(len(nouns))
    covers = [_covers(grid, bxs, size) for _, _, bxs in nouns]
    for m in t.names:
        hit = [bool(points_at(maps[m][tok], cov)) for (tok, _, _), cov in zip(nouns, covers, strict=True)]
        t.hits[m].append(sum(hit))
        for (_, shape, _), h in zip(nouns, hit, strict=True):
            t.by_shape[shape][m] += h
        if deletion:
            t.dels[m] += [deletion_auc(model, ca, tok, maps[m][tok].numpy()) for tok, _, _ in nouns]
    for _, shape, _ in nouns:
        t.by_shape[shape]["nouns"] += 1
    t.per_head = t.per_head + _pointing_per_head(ca, nouns, covers)


def _localisation_record(t: _Tally, methods, seed: int, n_boot: int) -> Localisation:
    n = int(sum(t.counts))
    if n == 0:
        return Localisation(0, 0, dict.fromkeys(t.names), {}, {}, {}, None, None, t.n_wrong,
                            _wrong_shares(t.wrong, t.n_wrong))
    total = np.array(t.counts)
    right = {m: np.array(v) for m, v in t.hits.items()}
    return Localisation(
        nouns=n,
        images=len(t.counts),
        pointing={m: float(v.sum() / n) for m, v in right.items()},
        pointing_ci={m: stats.bootstrap_ci(v, total, n_boot=n_boot, seed=seed) for m, v in right.items()},
        vs_random={m: stats.paired_bootstrap(right["random"], right[m], total, total, n_boot=n_boot,
                                             seed=seed).reported() for m in methods},
        pointing_by_shape={sh: {k: (v / d["nouns"] if k != "nouns" and d["nouns"] else v) for k, v in d.items()}
                           for sh, d in t.by_shape.items()},
        deletion_auc={m: float(np.mean(v)) for m, v in t.dels.items()} if t.dels["random"] else None,
        pointing_per_layer_head=(t.per_head / n).tolist(),
        wrong_nouns=t.n_wrong,
        wrong_words=_wrong_shares(t.wrong, t.n_wrong),
    )


def _wrong_shares(wrong: dict[str, dict[str, int]], n: int) -> dict[str, dict[str, float]] | None:
    return {m: {k: v / n for k, v in d.items()} for m, d in wrong.items()} if n else None


def _pointing_per_head(ca: CaptionAttention, nouns, covers: list[torch.Tensor]) -> np.ndarray:
    """(L, H) pointing hits of every single layer and head's raw attention over one caption's nouns."""
    L, H = ca.attention.shape[1:3]
    raw = patch_distribution(ca.attention.flatten(1, 2).permute(1, 0, 2).reshape(L * H * len(ca.token_ids), -1),
                             ca.n_prefix).reshape(L, H, len(ca.token_ids), -1)
    out = np.zeros((L, H))
    for (t, _, _), cov in zip(nouns, covers, strict=True):
        out += points_at(raw[:, :, t], cov).numpy()
    return out
