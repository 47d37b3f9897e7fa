"""Caption decoding: batched greedy and beam search with a key/value cache.

Cross-attention keys/values (and prompt/prefix keys/values) are computed once per image; with the
cache, each step runs the decoder on one new token per sequence. Without it, each step re-runs the
whole prefix (the reference the tests and benchmark compare against).

With `capture=True` the cross-attention weights of every generated token (the end token included) are
kept, in every layer and head: for token t, the attention of the query that produced it. Beam search
follows the back-pointers of the returned hypothesis, so the maps belong to the final beam.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Decoded:
    tokens: list[list[int]]  # generated ids per image, end token excluded
    finished: list[bool]  # ended with the end token (False: hit max_len)
    scores: list[float]  # sum of log-probabilities (beam: the length-normalised score)
    attentions: list[torch.Tensor] | None = None  # per image (T, n_layer, n_head, S); T counts the end token


class _Stepper:
    """One decoding step at a time for a batch of sequences, with or without the KV cache."""

    def __init__(self, model, feats: torch.Tensor, use_cache: bool, capture: bool):
        self.model, self.dec = model, model.decoder
        self.cross_kv = model.cross_kv(feats)  # per layer (B, nh, S, hs), once per image
        self.prefixes = model.prefixes()
        self.use_cache, self.capture = use_cache, capture
        self.past = None
        self.seq: torch.Tensor | None = None  # (B, t) ids so far (used without cache)

    def step(self, last: torch.Tensor, pos: int):
        """`last` (B,) token at position `pos` -> logits (B, V) and attention (B, L, nh, S) or None."""
        if self.use_cache:
            x = self.dec.embed(last[:, None], pos_offset=pos)
            h, self.past, atts = self.dec.forward_hidden(x, self.cross_kv, self.past, self.capture, self.prefixes)
        else:
            self.seq = last[:, None] if self.seq is None else torch.cat([self.seq, last[:, None]], dim=1)
            h, _, atts = self.dec.forward_hidden(self.dec.embed(self.seq), self.cross_kv, None, self.capture,
                                                 self.prefixes)
        logits = self.dec.logits(h[:, -1]).float()
        att = torch.stack([a[:, :, -1] for a in atts], dim=1) if self.capture else None  # (B, L, nh, S)
        return logits, att

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (beam search): caches, cross K/V and the running sequences."""
        self.cross_kv = [(k[index], v[index]) for k, v in self.cross_kv]
        if self.past is not None:
            self.past = [(k[index], v[index]) for k, v in self.past]
        if self.seq is not None:
            self.seq = self.seq[index]


def _max_len(model, max_len: int) -> int:
    return min(max_len, model.decoder.config.block_size - 1)


@torch.no_grad()
def greedy(model, feats: torch.Tensor, eot: int, max_len: int = 60, use_cache: bool = True,
           capture: bool = False, min_len: int = 0) -> Decoded:
    """Argmax decoding of a batch of encoder tokens (B, S, E); the end token is suppressed before
    `min_len` tokens."""
    B = feats.shape[0]
    max_len = _max_len(model, max_len)
    st = _Stepper(model, feats, use_cache, capture)
    last = torch.full((B,), eot, dtype=torch.long, device=feats.device)
    out = torch.full((B, max_len), eot, dtype=torch.long, device=feats.device)
    alive = torch.ones(B, dtype=torch.bool, device=feats.device)
    lengths = torch.full((B,), max_len, dtype=torch.long)
    scores = torch.zeros(B)
    atts = []
    for t in range(max_len):
        logits, att = st.step(last, t)
        if t < min_len:
            logits[:, eot] = float("-inf")
        logp = logits.log_softmax(-1)
        nxt = logits.argmax(-1)
        scores += torch.where(alive, logp.gather(1, nxt[:, None])[:, 0], torch.zeros_like(scores)).cpu()
        out[:, t] = nxt
        if capture:
            atts.append(att.cpu())
        ended = alive & (nxt == eot)
        lengths[ended.cpu()] = t
        alive &= ~ended
        last = nxt
        if not alive.any():
            break
    tokens = [out[b, : lengths[b]].tolist() for b in range(B)]
    finished = [int(lengths[b]) < max_len for b in range(B)]
    attentions = None
    if capture:
        stacked = torch.stack(atts, dim=1)  # (B, steps, L, nh, S)
        attentions = [stacked[b, : min(int(lengths[b]) + 1, stacked.shape[1])] for b in range(B)]
    return Decoded(tokens, finished, scores.tolist(), attentions)


@torch.no_grad()
def beam_search(model, feats: torch.Tensor, eot: int, beams: int = 3, max_len: int = 60,
                length_penalty: float = 1.0, use_cache: bool = True, capture: bool = False,
                min_len: int = 0) -> Decoded:
    """Beam search; hypotheses are ranked by sum(log p) / length ** length_penalty (length counts the
    end token). Stops when every image has `beams` finished hypotheses that no live beam can beat."""
    if beams == 1:
        return greedy(model, feats, eot, max_len, use_cache, capture, min_len)
    B, K = feats.shape[0], beams
    max_len = _max_len(model, max_len)
    dev = feats.device
    st = _Stepper(model, feats.repeat_interleave(K, dim=0), use_cache, capture)
    last = torch.full((B * K,), eot, dtype=torch.long, device=dev)
    score = torch.full((B, K), float("-inf"), device=dev)
    score[:, 0] = 0.0  # all beams start identical: expand only the first
    parents, tokens_hist, att_hist = [], [], []
    finished: list[list[tuple[float, int, int, float]]] = [[] for _ in range(B)]  # (norm score, step, slot, raw)
    done = [False] * B
    for t in range(max_len):
        logits, att = st.step(last, t)
        if t < min_len:
            logits[:, eot] = float("-inf")
        logp = logits.log_softmax(-1).view(B, K, -1)
        V = logp.shape[-1]
        cand = (score[:, :, None] + logp).view(B, K * V)
        top_s, top_i = cand.topk(2 * K, dim=1)  # (B, 2K)
        parent, token = top_i // V, top_i % V
        new_score = torch.full((B, K), float("-inf"), device=dev)
        new_parent = torch.zeros((B, K), dtype=torch.long, device=dev)
        new_token = torch.full((B, K), eot, dtype=torch.long, device=dev)
        for b in range(B):
            kept = 0
            for j in range(2 * K):
                s, p, w = top_s[b, j].item(), parent[b, j].item(), token[b, j].item()
                if s == float("-inf"):
                    break
                if w == eot:
                    if not done[b] and j < K:  # only hypotheses that rank among the best K count
                        finished[b].append((s / (t + 1) ** length_penalty, t, -1 - p, s))
                    continue
                if kept < K:
                    new_score[b, kept], new_parent[b, kept], new_token[b, kept] = s, p, w
                    kept += 1
            finished[b].sort(key=lambda h: -h[0])
            if len(finished[b]) >= K:
                best_live = new_score[b].max().item() / (t + 1) ** length_penalty
                if best_live <= finished[b][K - 1][0]:
                    done[b] = True
        parents.append(new_parent.cpu())
        tokens_hist.append(new_token.cpu())
        if capture:
            att_hist.append(att.view(B, K, *att.shape[1:]).cpu())  # attention of the query at slot k
        if all(done):
            break
        flat = (new_parent + torch.arange(B, device=dev)[:, None] * K).view(-1)
        st.reorder(flat)
        score = new_score
        last = new_token.view(-1)
    steps = len(parents)
    out_tokens, out_fin, out_scores, out_atts = [], [], [], []
    for b in range(B):
        if finished[b]:
            norm, t_end, slot_code, _ = finished[b][0]
            slot = -1 - slot_code  # beam (at step t_end's input) that emitted the end token
            seq, att_seq = [], []
            if capture:
                att_seq.append(att_hist[t_end][b, slot])
            tt, k = t_end - 1, slot
            fin = True
        else:  # no hypothesis ended: take the best live beam at the last step
            k = int(torch.argmax(score[b]).item()) if steps else 0
            tt = steps - 1
            seq, att_seq, fin = [], [], False
            norm = score[b, k].item() / max(steps, 1) ** length_penalty
        while tt >= 0:  # follow back-pointers: slot k at step tt holds token tokens_hist[tt][b, k]
            seq.append(int(tokens_hist[tt][b, k]))
            p = int(parents[tt][b, k])
            if capture:
                att_seq.append(att_hist[tt][b, p])
            k, tt = p, tt - 1
        out_tokens.append(seq[::-1])
        out_fin.append(fin)
        out_scores.append(norm)
        if capture:
            out_atts.append(torch.stack(att_seq[::-1]))
    return Decoded(out_tokens, out_fin, out_scores, out_atts if capture else None)


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


def caption_images(model, paths, tokenizer, transform, beams: int = 1, max_len: int = 60, batch_size: int = 16,
                   length_penalty: float = 1.0, device="cpu", progress: bool = True, features=None) -> dict[str, str]:
    """{file name without extension: caption} for image files. `features(indices)` may supply
    encoder tokens (a cache); otherwise images go through `transform` and the model's encoder."""
    from tqdm.auto import tqdm

    from .io import open_image, progress_disabled

    out = {}
    for i in tqdm(range(0, len(paths), batch_size), desc=f"captioning ({'greedy' if beams == 1 else f'beam {beams}'})",
                  disable=not progress or progress_disabled(), leave=False):
        chunk = paths[i:i + batch_size]
        if features is not None:
            feats = features(list(range(i, i + len(chunk))))
        else:
            feats = model.encode(torch.stack([transform(open_image(p)) for p in chunk]).to(device))
        res = beam_search(model, feats, tokenizer.eot_id, beams, max_len, length_penalty)
        for p, toks in zip(chunk, res.tokens, strict=True):
            out[p.stem] = tokenizer.decode(toks).strip()
    return out
