"""Caption decoding: batched greedy and beam search with a key/value cache.

Cross-attention keys/values (and prompt/prefix keys/values) are computed once per image; the beams
of an image share them (see `decoder.CrossAttention`). With the cache (`decoder.KVCache`, filled in
place) each step runs the decoder on one new token per sequence. Without it, each step re-runs the
whole prefix (the reference the tests and benchmark compare against).

Captions end at different lengths. With `prune=True` (beam search's default) finished sequences leave
the batch: once half of the rows still computed have finished, the batch is compacted (cross
keys/values, caches and bookkeeping), so the remaining steps cost less. Results are the same tokens as with
`prune=False`, which keeps every row to the end.

With `capture=True` the cross-attention weights of every generated token (the end token included) are
kept, in every layer and head: for token t, the attention of the query that produced it. Beam search
follows the back-pointers of the returned hypothesis, so the maps belong to the final beam.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..core.progress import progress as progress_bar
from .gpt2 import KVCache


@dataclass(frozen=True)
class Controls:
    """Decoding controls against repetition, with transformers' semantics (`generate`'s
    `no_repeat_ngram_size` and `repetition_penalty`). The sequence they look at is the whole input:
    the start token and every token generated so far."""
    no_repeat_ngram_size: int = 0  # ban any token that would repeat an n-gram of the sequence (0: off)
    repetition_penalty: float = 1.0  # scores of tokens already in the sequence: positive / p, negative * p (1: off)

    def __post_init__(self):
        from ..core.errors import HW3Error

        if not (isinstance(self.no_repeat_ngram_size, int) and 0 <= self.no_repeat_ngram_size <= 64):
            raise HW3Error(f"no_repeat_ngram_size (--no-repeat-ngram-size) must be an integer in 0..64, got "
                           f"{self.no_repeat_ngram_size!r}")
        ok = isinstance(self.repetition_penalty, int | float) and not isinstance(self.repetition_penalty, bool)
        if not (ok and 0 < self.repetition_penalty <= 100):
            raise HW3Error(f"repetition_penalty (--repetition-penalty) must be a number in (0, 100], got "
                           f"{self.repetition_penalty!r}")

    @property
    def active(self) -> bool:
        return self.no_repeat_ngram_size > 0 or self.repetition_penalty != 1.0

    def apply(self, scores: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """`scores` (R, V) of the next token after `seq` (R, t), processed (a new tensor)."""
        if self.repetition_penalty != 1.0:  # transformers' RepetitionPenaltyLogitsProcessor
            seq_d = seq.to(scores.device)
            got = scores.gather(1, seq_d)
            got = torch.where(got < 0, got * self.repetition_penalty, got / self.repetition_penalty)
            scores = scores.scatter(1, seq_d, got)
        n = self.no_repeat_ngram_size
        if n > 0 and seq.shape[1] + 1 >= n:  # transformers' NoRepeatNGramLogitsProcessor
            scores = scores.clone() if self.repetition_penalty == 1.0 else scores
            for r, row in enumerate(seq.tolist()):
                prefix = tuple(row[len(row) - n + 1:]) if n > 1 else ()
                banned = {g[-1] for g in zip(*[row[i:] for i in range(n)], strict=False) if tuple(g[:-1]) == prefix}
                if banned:
                    scores[r, list(banned)] = float("-inf")
        return scores


OFF = Controls()


@dataclass
class Decoded:
    tokens: list[list[int]]  # generated ids per image, end token excluded
    finished: list[bool]  # ended with the end token (False: hit max_len)
    scores: list[float]  # sum of log-probabilities (beam: the length-normalised score)
    attentions: list[torch.Tensor] | None = None  # per image (T, n_layer, n_head, S); T counts the end token


class _Stepper:
    """One decoding step at a time for `group` rows per image (beams), with or without the KV cache.

    `images` maps each image still in the batch to its index in the caller's batch; rows are grouped
    image by image (row r belongs to image r // group)."""

    def __init__(self, model, feats: torch.Tensor, group: int, use_cache: bool, capture: bool, max_len: int,
                 controls: Controls = OFF):
        self.dec, self.group = model.decoder, group
        self.cross_kv = model.cross_kv(feats)  # per layer (B, nh, S, hs), once per image
        self.prefixes = model.prefixes()
        self.use_cache, self.capture, self.controls = use_cache, capture, controls
        self.cache = [KVCache(max_len) for _ in self.dec.h] if use_cache else None
        self.track = not use_cache or controls.active  # keep the ids so far (the uncached input; the controls)
        self.seq: torch.Tensor | None = None  # (R, t) ids so far, the start token included (when tracked)
        self.images = torch.arange(feats.shape[0])  # caller's index of each image in the batch

    def step(self, last: torch.Tensor, pos: int):
        """`last` (R,) token at position `pos` -> logits (R, V) and attention (R, L, nh, S) or None."""
        if self.track:
            self.seq = last[:, None] if self.seq is None else torch.cat([self.seq, last[:, None]], dim=1)
        if self.use_cache:
            x = self.dec.embed(last[:, None], pos_offset=pos)
            h, _, atts = self.dec.forward_hidden(x, self.cross_kv, self.cache, self.capture, self.prefixes)
        else:
            h, _, atts = self.dec.forward_hidden(self.dec.embed(self.seq), self.cross_kv, None, self.capture,
                                                 self.prefixes)
        logits = self.dec.logits(h[:, -1]).float()
        att = torch.stack([a[:, :, -1] for a in atts], dim=1) if self.capture else None  # (R, L, nh, S)
        return logits, att

    def select_rows(self, index: torch.Tensor) -> None:
        """Reorder rows within their images (beam search): self-attention state only."""
        if self.cache is not None:
            for c in self.cache:
                c.select_rows(index)
        if self.seq is not None:
            self.seq = self.seq[index]

    def keep_images(self, keep: torch.Tensor) -> torch.Tensor:
        """Drop every image not in `keep` (positions in the current batch) with all of its rows.
        Returns the kept rows' positions in the batch before the call."""
        dev = self.cross_kv[0][0].device
        keep = keep.to(dev)
        rows = (keep[:, None] * self.group + torch.arange(self.group, device=dev)).view(-1)
        self.cross_kv = [(k.index_select(0, keep), v.index_select(0, keep)) for k, v in self.cross_kv]
        self.select_rows(rows)
        self.images = self.images[keep.cpu()]
        return rows


def _max_len(model, max_len: int) -> int:
    return min(max_len, model.decoder.config.block_size - 1)


def _worth_compacting(n_done: int, n_rows: int) -> bool:
    """Compaction copies the kept rows' cross keys/values once, and a decoding step's GEMMs stream every
    weight whatever the row count, so it pays only once half of the rows have finished."""
    return n_done > 0 and 2 * n_done >= n_rows


def _rows_to_keep(alive: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """Positions of the live rows, topped up with finished ones to a multiple of `multiple` rows: GEMMs
    of 8, 16, ... rows run faster than odd sizes on the CPU (finished rows are computed and ignored)."""
    live = torch.nonzero(alive)[:, 0]
    n = min(alive.numel(), -(-live.numel() // multiple) * multiple)
    return torch.sort(torch.cat([live, torch.nonzero(~alive)[:, 0][: n - live.numel()]])).values


@dataclass(frozen=True)
class Search:
    """How one batch is searched (what to decode is `Decoding`'s): the mechanics a caller rarely changes."""
    use_cache: bool = True  # KV cache; False recomputes the prefix every step (the slow reference)
    capture: bool = False  # keep each generated token's cross-attention (P3)
    min_len: int = 0  # the end token is suppressed before this many tokens
    prune: bool | None = None  # finished rows leave the batch (None: greedy keeps them, beam search prunes)


PLAIN = Search()


@torch.no_grad()
def greedy(model, feats: torch.Tensor, eot: int, max_len: int = 60, controls: Controls = OFF,
           search: Search = PLAIN) -> Decoded:
    """Argmax decoding of a batch of encoder tokens (B, S, E); the end token is suppressed before
    `search.min_len` tokens, and `controls` process the logits (as transformers' greedy search does).
    Pruning is off by default: on a 2-core CPU with batch 16 a step streams every weight whatever the row
    count, so dropping rows saved less than compaction cost (bench/bench_decode.py measures it)."""
    use_cache, capture, min_len, prune = search.use_cache, search.capture, search.min_len, bool(search.prune)
    B, dev = feats.shape[0], feats.device
    max_len = _max_len(model, max_len)
    st = _Stepper(model, feats, 1, use_cache, capture, max_len, controls)
    last = torch.full((B,), eot, dtype=torch.long, device=dev)  # (R,) one row per image in the batch
    alive = torch.ones(B, dtype=torch.bool, device=dev)  # (R,) False once the row made its end token
    out = torch.full((B, max_len), eot, dtype=torch.long)  # indexed by the caller's image index
    lengths = torch.full((B,), max_len, dtype=torch.long)
    scores = torch.zeros(B)
    atts: list[list[torch.Tensor]] = [[] for _ in range(B)]
    for t in range(max_len):
        logits, att = st.step(last, t)  # (R, V)
        if controls.active:
            logits = controls.apply(logits, st.seq)
        if t < min_len:
            logits[:, eot] = float("-inf")
        nxt = logits.argmax(-1)  # (R,)
        logp = logits.gather(1, nxt[:, None])[:, 0] - logits.logsumexp(-1)  # (R,) log-softmax of the choice
        idx, nxt_c, alive_c = st.images, nxt.cpu(), alive.cpu()
        out[idx[alive_c], t] = nxt_c[alive_c]
        scores[idx[alive_c]] += logp.cpu()[alive_c]
        if capture:
            att_c = att.cpu()
            for r in torch.nonzero(alive_c)[:, 0].tolist():
                atts[int(idx[r])].append(att_c[r])
        ended = alive_c & (nxt_c == eot)
        lengths[idx[ended]] = t
        alive &= ~ended.to(dev)
        last = nxt
        n_done = int((~alive).sum())
        if n_done == alive.numel():
            break
        if prune and _worth_compacting(n_done, alive.numel()):
            keep = _rows_to_keep(alive.cpu())
            if keep.numel() < alive.numel():
                st.keep_images(keep)
                alive, last = alive[keep.to(dev)], last[keep.to(dev)]
    tokens = [out[b, : lengths[b]].tolist() for b in range(B)]
    finished = [int(lengths[b]) < max_len for b in range(B)]
    attentions = [torch.stack(a) for a in atts] if capture else None
    return Decoded(tokens, finished, scores.tolist(), attentions)


def _beam_select(top_s: list, parent: list, token: list, K: int, eot: int, at_max: bool = False):
    """From one image's 2K best (score, parent, token) candidates: the K best that go on (not the end
    token), and the hypotheses that end here among the best K: (score, parent, None) for the end token,
    and at the last step (`at_max`, transformers' max-length stopping) (score, parent, token) for the rest."""
    live, ended = [], []
    for j, (s, p, w) in enumerate(zip(top_s, parent, token, strict=True)):
        if s == float("-inf"):
            break
        if j < K and (w == eot or at_max):  # only hypotheses that rank among the best K count
            ended.append((s, p, None if w == eot else w))
        if w != eot and len(live) < K:
            live.append((s, p, w))
    live += [(float("-inf"), 0, eot)] * (K - len(live))
    return live, ended


class BeamState:
    """Beam search's bookkeeping in one place.

    Two index spaces meet here: the rows of the batch (the b images still computed, K beams each, in
    the stepper's order) and the caller's image index (every step's back-pointers, tokens and maps, the
    finished hypotheses). `reorder` and `compact` change the rows, and always move the scores, the last
    tokens and the stepper's state together."""

    def __init__(self, stepper: _Stepper, B: int, K: int, eot: int, capture: bool):
        dev = stepper.cross_kv[0][0].device
        self.st, self.K, self.eot, self.capture = stepper, K, eot, capture
        self.score = torch.full((B, K), float("-inf"), device=dev)  # (b, K) rows of the batch
        self.score[:, 0] = 0.0  # all beams start identical: expand only the first
        self.last = torch.full((B * K,), eot, dtype=torch.long, device=dev)  # (b*K,) each row's last token
        self.best_live = torch.full((B, K), float("-inf"))  # (B, K) caller-indexed, for images that never finish
        self.parents: list[torch.Tensor] = []  # per step (B, K) caller-indexed: the slot each beam came from
        self.tokens: list[torch.Tensor] = []  # per step (B, K): the token each beam added
        self.atts: list[torch.Tensor] = []  # per step (B, K, L, nh, S) with capture
        # per image: (norm score, step, slot, last token): the hypothesis slot `slot` continued at `step`,
        # ending with the end token (None) or, at the last step, with `last token`
        self.finished: list[list[tuple[float, int, int, int | None]]] = [[] for _ in range(B)]
        self.done = [False] * B  # caller-indexed

    def images(self) -> list[int]:
        """The caller's index of each image in the batch, in row order."""
        return self.st.images.tolist()

    def step(self, t: int, min_len: int, length_penalty: float, last_step: bool = False) -> None:
        """Expand every live beam by one token, record the step, and reorder the rows to the new beams.
        At the `last_step` the best K candidates end there, as transformers' max-length stopping does."""
        K, eot = self.K, self.eot
        logits, att = self.st.step(self.last, t)  # (b*K, V)
        if t < min_len:
            logits[:, eot] = float("-inf")
        logp = logits.log_softmax(-1)
        if self.st.controls.active:  # transformers' beam search processes the log-probabilities
            logp = self.st.controls.apply(logp, self.st.seq)
        logp = logp.view(-1, K, logits.shape[-1])
        V = logp.shape[-1]
        top_s, top_i = (self.score[:, :, None] + logp).view(-1, K * V).topk(2 * K, dim=1)  # (b, 2K)
        top_s, parent, token = top_s.tolist(), (top_i // V).tolist(), (top_i % V).tolist()
        images = self.images()
        new = [_beam_select(top_s[i], parent[i], token[i], K, eot, last_step) for i in range(len(images))]
        new_score = torch.tensor([[s for s, _, _ in live] for live, _ in new], dtype=self.score.dtype)
        new_parent = torch.tensor([[p for _, p, _ in live] for live, _ in new], dtype=torch.long)
        new_token = torch.tensor([[w for _, _, w in live] for live, _ in new], dtype=torch.long)
        norm = (t + 1) ** length_penalty
        for i, (b, (_, ended)) in enumerate(zip(images, new, strict=True)):
            if self.done[b]:  # kept in the batch (prune=False or not yet compacted): adds nothing
                continue
            self.finished[b] = sorted(self.finished[b] + [(s / norm, t, p, w) for s, p, w in ended], key=lambda h: -h[0])
            self.done[b] = len(self.finished[b]) >= K and float(new_score[i].max()) / norm <= self.finished[b][K - 1][0]
        idx, B = self.st.images, len(self.done)
        self.parents.append(torch.zeros(B, K, dtype=torch.long).index_copy_(0, idx, new_parent))
        self.tokens.append(torch.full((B, K), eot, dtype=torch.long).index_copy_(0, idx, new_token))
        self.best_live.index_copy_(0, idx, new_score)
        if self.capture:
            a = att.cpu().view(-1, K, *att.shape[1:])  # attention of the query at slot k
            self.atts.append(torch.zeros(B, *a.shape[1:]).index_copy_(0, idx, a))
        self.reorder(new_parent, new_score, new_token)

    def reorder(self, parent: torch.Tensor, score: torch.Tensor, token: torch.Tensor) -> None:
        """Rows become the new beams: beam k of image i continues row `parent[i, k]` with `token[i, k]`."""
        dev = self.score.device
        flat = (parent + torch.arange(parent.shape[0])[:, None] * self.K).view(-1).to(dev)
        self.st.select_rows(flat)
        self.score, self.last = score.to(dev), token.view(-1).to(dev)

    def compact(self) -> None:
        """Drop the finished images' rows from the batch (scores, last tokens and stepper together)."""
        keep = torch.tensor([i for i, b in enumerate(self.images()) if not self.done[b]], dtype=torch.long)
        rows = self.st.keep_images(keep)
        self.score, self.last = self.score[keep.to(self.score.device)], self.last[rows]

    def n_done_in_batch(self) -> int:
        return sum(self.done[b] for b in self.images())

    def result(self, length_penalty: float) -> Decoded:
        """Each image's best finished hypothesis (or best live beam) from the per-step back-pointers."""
        steps = len(self.parents)
        out_tokens, out_fin, out_scores, out_atts = [], [], [], []
        for b in range(len(self.finished)):
            if self.finished[b]:
                norm, t_end, slot, last = self.finished[b][0]  # beam (at step t_end's input) that ended there
                seq, att_seq = [] if last is None else [last], [self.atts[t_end][b, slot]] if self.capture else []
                tt, k, fin = t_end - 1, slot, last is None
            else:  # no hypothesis ended: take the best live beam at the last step
                k = int(torch.argmax(self.best_live[b]).item()) if steps else 0
                tt, seq, att_seq, fin = steps - 1, [], [], False
                norm = self.best_live[b, k].item() / max(steps, 1) ** length_penalty
            while tt >= 0:  # follow back-pointers: slot k at step tt holds token tokens[tt][b, k]
                seq.append(int(self.tokens[tt][b, k]))
                p = int(self.parents[tt][b, k])
                if self.capture:
                    att_seq.append(self.atts[tt][b, p])
                k, tt = p, tt - 1
            out_tokens.append(seq[::-1])
            out_fin.append(fin)
            out_scores.append(norm)
            if self.capture:
                out_atts.append(torch.stack(att_seq[::-1]))
        return Decoded(out_tokens, out_fin, out_scores, out_atts if self.capture else None)


@torch.no_grad()
def beam_search(model, feats: torch.Tensor, eot: int, beams: int = 3, max_len: int = 60,
                length_penalty: float = 1.0, controls: Controls = OFF, search: Search = PLAIN) -> Decoded:
    """Beam search; hypotheses are ranked by sum(log p) / length ** length_penalty (length counts the
    end token). An image is done when it has `beams` finished hypotheses that no live beam can beat;
    unless `search.prune` is False its rows then leave the batch. One beam is `greedy` (without pruning)."""
    if beams == 1:
        return greedy(model, feats, eot, max_len, controls, replace(search, prune=False))
    max_len = _max_len(model, max_len)
    state = BeamState(_Stepper(model, feats, beams, search.use_cache, search.capture, max_len, controls),
                      feats.shape[0], beams, eot, search.capture)
    for t in range(max_len):
        state.step(t, search.min_len, length_penalty, last_step=t == max_len - 1)
        if all(state.done):
            break
        n_images = len(state.images())
        if search.prune is not False and _worth_compacting(state.n_done_in_batch(), n_images):
            state.compact()
    return state.result(length_penalty)


@torch.no_grad()
def teacher_forced_argmax(model, feats: torch.Tensor, eot: int, max_len: int = 60) -> list[list[int]]:
    """The slow reference: grow each sequence by the argmax of a full teacher-forced forward."""
    out = []
    for b in range(feats.shape[0]):
        seq = [eot]
        for _ in range(_max_len(model, max_len)):
            logits = model(feats[b:b + 1], torch.tensor([seq], device=feats.device))
            nxt = int(logits[0, -1].argmax())
            if nxt == eot:
                break
            seq.append(nxt)
        out.append(seq[1:])
    return out


@torch.no_grad()
def sequence_logprob(model, feats: torch.Tensor, tokens: list[int], eot: int, with_end: bool = True) -> float:
    """Sum of log-probabilities of `tokens` (+ the end token) under a teacher-forced forward."""
    seq = [eot] + tokens + ([eot] if with_end else [])
    x = torch.tensor([seq[:-1]], device=feats.device)
    logp = F.log_softmax(model(feats[None] if feats.dim() == 2 else feats, x).float(), -1)[0]
    return float(sum(logp[i, seq[i + 1]] for i in range(len(seq) - 1)))


# ----------------------------------------------------------------------------------------------
# captioning image files


@dataclass(frozen=True)
class Decoding:
    """How captions are decoded, as one record from the command line and the notebooks down to the search."""
    beams: int = 1  # beam width; 1 is greedy
    max_len: int = 60  # tokens generated at most, the end token not counted
    length_penalty: float = 1.0  # beam score = log p / length ** length_penalty
    controls: Controls = OFF  # transformers' no-repeat n-grams and repetition penalty
    batch_size: int = 16  # images decoded together
    quantize: str | None = None  # "int8": a dynamic-int8 copy of the decoder (CPU); changes the captions
    packed: bool = True  # CPU fp32: MKL-packed decoder weights (a second copy, the same captions)


GREEDY = Decoding()


def caption_images(model, paths, tokenizer, transform, decoding: Decoding = GREEDY, device="cpu",
                   progress: bool = True, precision=None) -> dict[str, str]:
    """{file name without extension: caption} for image files, each through `transform` and the model's
    encoder. Decoding runs inside `fastpath.fast_decoding` (packed fp32 linears on CPU, the GPU's half
    precision on CUDA, dynamic int8 when `decoding.quantize="int8"`)."""

    from ..core.images import open_image
    from .fastpath import fast_decoding

    d, out = decoding, {}
    with fast_decoding(model, device, d.quantize, rows_hint=d.batch_size * d.beams, precision=precision,
                       packed=d.packed):
        for i in progress_bar(range(0, len(paths), d.batch_size),
                              desc=f"captioning ({'greedy' if d.beams == 1 else f'beam {d.beams}'})",
                              shown=progress, leave=False):
            chunk = paths[i:i + d.batch_size]
            feats = model.encode(torch.stack([transform(open_image(p)) for p in chunk]).to(device))
            res = beam_search(model, feats, tokenizer.eot_id, d.beams, d.max_len, d.length_penalty,
                              controls=d.controls)
            for p, toks in zip(chunk, res.tokens, strict=True):
                out[p.stem] = tokenizer.decode(toks).strip()
    return out
