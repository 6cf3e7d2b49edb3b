"""One generation engine over interchangeable backends (eager torch, ExecuTorch, onnxruntime).

A backend is anything with ``forward(tokens, start_pos) -> logits (T, V)`` over its own static
KV cache. The engine owns the position pointer, so rolling back after rejected speculative
candidates is ``engine.rollback(pos)``: the backend's stale cache rows are masked by position and
overwritten by the next call.

Example::

    eng = Engine(EagerBackend(lm.model), lm.tokenizer)
    res = eng.generate(lm.tokenizer.encode("Once upon a time"), max_new_tokens=32)
    print(res.text)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

import torch

from edgekit.errors import UserError
from edgekit.models.tokenizer import StreamDecoder, Tokenizer


class Backend(Protocol):
    """What the engine needs from a program holding a static KV cache."""

    name: str
    max_seq_len: int
    max_chunk: int  # most tokens one forward accepts
    vocab_size: int

    def forward(self, tokens: list[int], start_pos: int) -> torch.Tensor:
        """Run ``tokens`` at cache slots start_pos.. and return float32 logits (T, V)."""
        ...


@dataclass
class SamplingConfig:
    """temperature 0 -> greedy; otherwise softmax(logits / T) restricted to the top-p nucleus."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise UserError(f"temperature {self.temperature} is negative", "use 0 for greedy or a value > 0")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top-p {self.top_p} is outside (0, 1]", "use e.g. --top-p 0.9")


class Sampler:
    def __init__(self, cfg: SamplingConfig) -> None:
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution actually sampled from (after temperature and top-p), shape (V,)."""
        p = torch.softmax(logits.float() / max(self.cfg.temperature, 1e-8), dim=-1)
        if self.cfg.top_p < 1.0:
            sp, idx = torch.sort(p, descending=True)
            keep = (sp.cumsum(-1) - sp) < self.cfg.top_p
            sp = torch.where(keep, sp, torch.zeros_like(sp))
            p = torch.zeros_like(p).scatter_(-1, idx, sp)
            p = p / p.sum()
        return p

    def __call__(self, logits: torch.Tensor) -> int:
        if self.cfg.temperature == 0:
            return int(torch.argmax(logits))
        return int(torch.multinomial(self.probs(logits), 1, generator=self.gen))


@dataclass
class Timings:
    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0  # prompt in -> first new token out
    prefill_s: float = 0.0
    decode_s: float = 0.0  # after the first token

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["prefill_tok_s"] = self.prompt_tokens / self.prefill_s if self.prefill_s else None
        n = max(self.new_tokens - 1, 0)
        d["decode_tok_s"] = n / self.decode_s if self.decode_s and n else None
        return d


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    tokens: list[int]
    text: str
    stop_reason: str  # eos | length | context
    timings: Timings = field(default_factory=Timings)

    def to_dict(self) -> dict:
        return {"prompt_ids": self.prompt_ids, "tokens": self.tokens, "text": self.text,
                "stop_reason": self.stop_reason, "timings": self.timings.to_dict()}


class Engine:
    """Chunked prefill, decode, sampling, stop tokens, streaming, and position rollback."""

    def __init__(self, backend: Backend, tokenizer: Tokenizer | None = None,
                 stop_ids: Iterable[int] | None = None) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids if stop_ids is not None else (tokenizer.eos_ids if tokenizer else []))
        self.pos = 0  # cache rows [0, pos) hold the conversation so far

    def reset(self) -> None:
        self.pos = 0

    def rollback(self, pos: int) -> None:
        """Forget cache rows at and after ``pos`` (speculative rejection, chat edit)."""
        if not 0 <= pos <= self.pos:
            raise ValueError(f"rollback to {pos} outside [0, {self.pos}]")
        self.pos = pos

    def step(self, tokens: list[int]) -> torch.Tensor:
        """Append ``tokens`` (at most max_chunk) and return their logits (T, V)."""
        if self.pos + len(tokens) > self.backend.max_seq_len:
            raise UserError(f"context full: {self.pos} + {len(tokens)} tokens > max_seq_len "
                            f"{self.backend.max_seq_len}", "shorten the prompt or re-export with a larger --max-seq-len")
        logits = self.backend.forward(tokens, self.pos)
        self.pos += len(tokens)
        return logits

    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Feed ``ids`` in chunks of ``max_chunk``; return the last token's logits (V,)."""
        if not ids:
            raise UserError("empty prompt", "pass a non-empty --prompt")
        c = self.backend.max_chunk
        logits = None
        last_only = getattr(self.backend, "supports_last_only", False)
        for i in range(0, len(ids), c):
            chunk = ids[i:i + c]
            if last_only:  # no chunk x V logits buffer: the head runs on the last row only
                if self.pos + len(chunk) > self.backend.max_seq_len:
                    self.step(chunk)  # raises the context-full error
                logits = self.backend.forward(chunk, self.pos, last_only=True)
                self.pos += len(chunk)
            else:
                logits = self.step(chunk)
        return logits[-1]

    def generate(self, prompt_ids: list[int], max_new_tokens: int = 64,
                 sampling: SamplingConfig | None = None,
                 on_text: Callable[[str], None] | None = None,
                 on_token: Callable[[int], None] | None = None) -> GenerationResult:
        """Generate after ``prompt_ids`` (appended to whatever the cache already holds)."""
        sampler = Sampler(sampling or SamplingConfig())
        stream = StreamDecoder(self.tokenizer, prompt_ids) if self.tokenizer else None
        t = Timings(prompt_tokens=len(prompt_ids))
        t0 = time.perf_counter()
        logits = self.prefill(prompt_ids)
        t.prefill_s = time.perf_counter() - t0
        out: list[int] = []
        reason = "length"
        t1 = None
        for _ in range(max_new_tokens):
            tok = sampler(logits)
            if t1 is None:
                t1 = time.perf_counter()
                t.ttft_s = t1 - t0
            if tok in self.stop_ids:
                reason = "eos"
                break
            out.append(tok)
            if on_token:
                on_token(tok)
            if stream and on_text:
                on_text(stream.push(tok))
            if len(out) == max_new_tokens:
                break
            if self.pos >= self.backend.max_seq_len:
                reason = "context"
                break
            logits = self.step([tok])[-1]
        t.new_tokens = len(out)
        t.decode_s = time.perf_counter() - t1 if t1 is not None else 0.0
        text = ""
        if self.tokenizer:
            full = self.tokenizer.decode(prompt_ids + out)
            head = self.tokenizer.decode(prompt_ids)
            text = full[len(head):] if full.startswith(head) else self.tokenizer.decode(out)
        return GenerationResult(list(prompt_ids), out, text, reason, t)


HEAD_ROWS = 8  # rows of the LM head computed at once when only argmaxes are kept


class EagerBackend:
    """The reference torch model as a backend (no export).

    ``n_layers`` runs only the first layers + final norm + head (an early-exit view). Besides
    ``forward`` it verifies token trees (``forward_tree``) and compacts accepted tree rows.
    """

    name = "eager"
    supports_last_only = True

    def __init__(self, model: torch.nn.Module, max_chunk: int | None = None, n_layers: int | None = None) -> None:
        self.model = model.eval()
        self.max_seq_len = model.args.max_seq_len
        self.max_chunk = max_chunk or self.max_seq_len
        self.vocab_size = model.args.vocab_size
        self.n_layers = n_layers

    @torch.inference_mode()
    def forward(self, tokens: list[int], start_pos: int, last_only: bool = False) -> torch.Tensor:
        """Logits (T, V); with ``last_only`` (1, V) for the last token only."""
        t = torch.tensor([tokens], dtype=torch.long)
        pos = torch.arange(start_pos, start_pos + len(tokens))
        if last_only:
            h = self.model(t, pos, n_layers=self.n_layers, return_hidden=True)[0, -1:]
            return self.model.output(h).float()
        return self.model(t, pos, n_layers=self.n_layers)[0]

    @torch.inference_mode()
    def forward_tree(self, tokens: list[int], start_pos: int, parents: list[int],
                     rows: list[int] | None = None, argmax_only: bool = False) -> torch.Tensor:
        """Logits for a token tree written at slots start_pos..start_pos+T-1; node i sees the
        prefix and its ancestors, at RoPE position start_pos + depth(i).

        Returns logits (T, V), or only for ``rows`` (len(rows), V), or with ``argmax_only`` the
        argmax per node (T,) computed a few rows at a time so no T x V buffer is ever held.
        """
        from edgekit.runtime.spec import tree_depths, tree_visibility

        n = len(tokens)
        slots = torch.arange(start_pos, start_pos + n)
        mask = self.model.slots.unsqueeze(0) < start_pos  # (1, S) prefix
        mask = mask.expand(n, -1).clone()
        mask[:, start_pos:start_pos + n] = tree_visibility(parents)
        rope = start_pos + torch.tensor(tree_depths(parents))
        t = torch.tensor([tokens], dtype=torch.long)
        h = self.model(t, slots, attn_mask=mask, rope_pos=rope, n_layers=self.n_layers, return_hidden=True)[0]
        head = self.model.output
        if argmax_only:
            return torch.cat([head(h[i:i + HEAD_ROWS]).argmax(-1) for i in range(0, n, HEAD_ROWS)])
        if rows is not None:
            h = h[rows]
        return head(h).float()

    @torch.inference_mode()
    def compact(self, start_pos: int, nodes: list[int]) -> None:
        """Move cache rows start_pos+nodes[i] to start_pos+i (the accepted tree path)."""
        src = torch.tensor(nodes) + start_pos
        dst = torch.arange(start_pos, start_pos + len(nodes))
        for layer in self.model.layers:
            c = layer.attention.kv_cache
            c.k_cache[:, :, dst] = c.k_cache[:, :, src]
            c.v_cache[:, :, dst] = c.v_cache[:, :, src]
