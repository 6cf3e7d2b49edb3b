"""Perplexity with a sliding window over any backend that returns logits for T tokens.

Example::

    lm = load_model()
    r = perplexity(EagerBackend(lm.model), lm.tokenizer, Path("tinystories_val.txt").read_text(),
                   max_tokens=20000)
    r.ppl  # ~3.9 for stories260K
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from edgekit.errors import UserError
from edgekit.models.tokenizer import Tokenizer
from edgekit.runtime.engine import Backend


@dataclass
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood (nats/token)
    tokens: int  # scored tokens
    window: int
    stride: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def tokenize_corpus(tok: Tokenizer, text: str, max_tokens: int | None = None) -> list[int]:
    """Split ``text`` into documents at blank lines and encode each as llama2.c pretokenizes a
    story: BOS + encode(doc). Without a BOS the first EOS separates documents instead.
    Returns at most ``max_tokens + 1`` ids (the first one is context, never scored)."""
    docs = [d.strip() for d in text.split("\n\n") if d.strip()]
    sep = tok.bos_id if tok.bos_id is not None else (tok.eos_ids[0] if tok.eos_ids else None)
    ids: list[int] = []
    for doc in docs:
        if sep is not None:
            ids.append(sep)
        ids.extend(tok.encode(doc, bos=False))
        if max_tokens and len(ids) >= max_tokens + 1:
            break
    return ids[: max_tokens + 1] if max_tokens else ids


def perplexity(backend: Backend, tok: Tokenizer, text: str, *, max_tokens: int | None = None,
               window: int | None = None, stride: int | None = None,
               advance: Callable[[int], None] | None = None) -> PerplexityResult:
    """Sliding-window perplexity: windows of ``window`` tokens advance by ``stride``; each window
    scores only tokens not scored before, with at least window - stride tokens of context.

    The backend must hold at least ``window`` positions; each window restarts at slot 0.
    """
    ids = tokenize_corpus(tok, text, max_tokens)
    if len(ids) < 2:
        raise UserError("corpus has fewer than 2 tokens", "pass a longer --corpus file")
    window = min(window or backend.max_seq_len, backend.max_seq_len)
    stride = stride or window // 2
    chunk = backend.max_chunk
    nll, count, scored_to = 0.0, 0, 1  # ids[0] is never predicted
    start = 0
    while scored_to < len(ids):
        seg = ids[start:start + window]
        logits = torch.cat([backend.forward(seg[i:i + chunk], i) for i in range(0, len(seg), chunk)])
        logp = torch.log_softmax(logits[:-1].float(), dim=-1)
        target = torch.tensor(seg[1:])
        first = scored_to - start - 1  # index into logp of the first unscored target
        lp = logp[first:].gather(1, target[first:, None]).squeeze(1)
        nll -= float(lp.sum())
        count += lp.numel()
        scored_to = start + len(seg)
        if advance:
            advance(lp.numel())
        if scored_to >= len(ids):
            break
        start += stride
    mean = nll / count
    return PerplexityResult(math.exp(mean), mean, count, window, stride)
