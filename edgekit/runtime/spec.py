"""Speculative decoding: drafters, chain and tree verification, greedy and lossless sampling.

The target is any backend the :class:`Engine` drives. A step writes the last accepted token and
the draft candidates into the cache tail at ``pos``, verifies them in one forward, keeps the
accepted rows and rolls the position back, so rejected candidates hold no cache rows. Trees are
verified with a node-visibility mask and per-node RoPE positions, then the accepted path's rows
are compacted to contiguous slots.

Example::

    target = Engine(EagerBackend(lm.model), lm.tokenizer)
    drafter = ModelDrafter(EarlyExitBackend(lm.model, n_layers=2), shared_with=target)
    res = SpecDecoder(target, drafter, SpecConfig(k=4)).generate(ids, max_new_tokens=64)
    res.tau  # mean tokens accepted per target forward (incl. the bonus token)
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from edgekit.errors import UserError
from edgekit.runtime.engine import EagerBackend, Engine, GenerationResult, Sampler, SamplingConfig, Timings


@dataclass
class SpecConfig:
    """``k``: chain draft length. ``tree``: (branch, max_nodes) for tree drafting, or None."""

    k: int = 4
    tree: tuple[int, int] | None = None
    full_logits: bool = False  # keep T x V verification logits (the naive engine's behaviour)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise UserError(f"draft length {self.k} < 1", "use a draft length of at least 1")
        if self.tree is not None:
            b, t = self.tree
            if b < 1 or t < 2:
                raise UserError(f"tree {self.tree} invalid", "use --tree BRANCH,NODES with BRANCH>=1, NODES>=2")

    @property
    def tokens_per_step(self) -> int:
        """T: rows one verification writes (the last token plus candidates)."""
        return self.tree[1] if self.tree else self.k + 1


RANKS = 16  # draft ranks tracked for the acceptance model


class TreeBackend(Protocol):
    """A backend that can verify a token tree and compact accepted rows."""

    def forward_tree(self, tokens: list[int], start_pos: int, parents: list[int]) -> torch.Tensor: ...

    def compact(self, start_pos: int, nodes: list[int]) -> None: ...


def tree_depths(parents: list[int]) -> list[int]:
    """Depth of each node; ``parents[i] < i`` (node 0 is the root, parent -1)."""
    d = []
    for i, p in enumerate(parents):
        d.append(0 if p < 0 else d[p] + 1)
    return d


def tree_visibility(parents: list[int]) -> torch.Tensor:
    """(T, T) bool: node i sees node j iff j is i or an ancestor of i."""
    n = len(parents)
    vis = torch.zeros(n, n, dtype=torch.bool)
    for i, p in enumerate(parents):
        vis[i, i] = True
        if p >= 0:
            vis[i] |= vis[p]
    return vis


class EarlyExitBackend(EagerBackend):
    """The target's first ``n_layers`` + final norm + head as a draft (no extra weights).

    It shares the target's KV cache: rows it writes for layers < n_layers are the same values
    the target computes for the same tokens, and the target overwrites them on verification.
    """

    def __init__(self, model: torch.nn.Module, n_layers: int) -> None:
        super().__init__(model, n_layers=n_layers)
        if not 1 <= n_layers < model.args.n_layers:
            raise UserError(f"early-exit depth {n_layers} outside [1, {model.args.n_layers - 1}]",
                            "use --draft early-exit:K with K smaller than the model's layer count")
        self.name = f"early-exit:{n_layers}"


class ModelDrafter:
    """Drafts with any backend: a separate small model, an early-exit view, a quantized copy.

    It tracks which tokens its cache holds (``fed``) and re-syncs by common prefix, so target
    rejections roll it back for free. With ``shared_with`` (an early-exit view of the target's
    own model), the target's accepted rows are the draft's rows too.
    """

    def __init__(self, backend, shared_with: Engine | None = None) -> None:
        self.backend = backend
        self.shared = shared_with
        self.fed: list[int] = []
        self.name = getattr(backend, "name", "draft")
        self.top: list[list[int]] = []  # draft's top-RANKS tokens at each drafted position
        self.full_logits = False

    def _run(self, tokens: list[int], start: int) -> torch.Tensor:
        return self.backend.forward(tokens, start)

    def sync(self, context: list[int]) -> torch.Tensor:
        """Make the cache hold ``context`` and return the draft logits after its last token."""
        if self.shared is not None:
            self.fed = context[: self.shared.pos]
        c = 0
        for a, b in zip(self.fed, context[:-1]):
            if a != b:
                break
            c += 1
        todo = context[c:]
        chunk = self.backend.max_chunk
        logits = None
        last_only = getattr(self.backend, "supports_last_only", False)
        for i in range(0, len(todo), chunk):
            part = todo[i:i + chunk]
            if last_only:
                logits = self.backend.forward(part, c + i, last_only=True)
            else:
                logits = self._run(part, c + i)
        self.fed = list(context)
        return logits[-1]

    def chain(self, context: list[int], k: int, sampler: Sampler | None) -> tuple[list[int], list[torch.Tensor]]:
        """k draft tokens after ``context`` and the distributions they were drawn from."""
        logits = self.sync(context)
        toks, qs = [], []
        self.top = []
        for i in range(k):
            self.top.append(torch.topk(logits, min(RANKS, logits.numel())).indices.tolist())
            if sampler is None or sampler.cfg.temperature == 0:
                t, q = int(torch.argmax(logits)), None
            else:
                q = sampler.probs(logits)
                t = int(torch.multinomial(q, 1, generator=sampler.gen))
            toks.append(t)
            qs.append(q)
            if i + 1 < k:
                logits = self._run([t], len(self.fed))[-1]
                self.fed.append(t)
        return toks, qs

    def tree(self, context: list[int], branch: int, max_nodes: int) -> tuple[list[int], list[int]]:
        """Greedy top-``branch`` tree of at most ``max_nodes`` nodes rooted at context[-1]."""
        root_logits = self.sync(context)
        start = len(context) - 1
        tokens, parents, score = [context[-1]], [-1], [0.0]
        logp = {0: torch.log_softmax(root_logits.float(), -1)}
        frontier = [0]
        while len(tokens) < max_nodes and frontier:
            cands = []
            for n in frontier:
                top = torch.topk(logp[n], branch)
                cands += [(score[n] + float(v), n, int(t)) for v, t in zip(top.values, top.indices)]
            cands.sort(key=lambda c: -c[0])
            cands = cands[: max_nodes - len(tokens)]
            frontier = []
            for s, p, t in cands:
                frontier.append(len(tokens))
                tokens.append(t)
                parents.append(p)
                score.append(s)
            if len(tokens) >= max_nodes:
                break
            # One draft forward over the whole tree; the head runs only for the new frontier
            # (the naive setting computes logits for every node).
            if self.full_logits:
                lg = self.backend.forward_tree(tokens, start, parents)[frontier]
            else:
                lg = self.backend.forward_tree(tokens, start, parents, rows=frontier)
            for j, n in enumerate(frontier):
                logp[n] = torch.log_softmax(lg[j].float(), -1)
        self.fed = list(context[:-1])  # tree rows are scratch; resync next time
        return tokens, parents


class LookupDrafter:
    """Prompt-lookup drafting: no model, no weights, no KV cache. The longest n-gram (``max_ngram``
    down to ``min_ngram`` tokens) that ends the context and occurred earlier in it proposes the
    tokens that followed its latest earlier occurrence. A draft costs a list search instead of
    a forward, so it pays wherever the text repeats itself (names, phrases, code, a quoted
    prompt) even when a verification forward costs as much as a plain step (small models on a
    CPU). Chains only; the draft is a point mass, which speculative sampling handles exactly.
    """

    name = "lookup"
    backend = None

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise UserError(f"bad lookup n-gram range {min_ngram}..{max_ngram}", "use lookup:N with N >= 1")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.fed: list[int] = []
        self.top: list[list[int]] = []
        self.full_logits = False

    def propose(self, context: list[int], k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the context's tail."""
        last = context[-1] if context else None
        for n in range(min(self.max_ngram, len(context) - 1), self.min_ngram - 1, -1):
            tail = context[-n:]
            for i in range(len(context) - n - 1, -1, -1):  # latest occurrence first
                # compare the last token before slicing: the decode loop runs this every round
                if context[i + n - 1] == last and context[i:i + n] == tail:
                    return context[i + n:i + n + k]
        return []

    def chain(self, context: list[int], k: int, sampler: Sampler | None) -> tuple[list[int], list[None]]:
        toks = self.propose(context, k)
        self.top = [[t] for t in toks]  # the proposal is the draft's only rank
        return toks, [None] * len(toks)  # None: a point mass at the token (SpecDecoder._chain_step)

    def tree(self, context: list[int], branch: int, max_nodes: int):
        raise UserError("the lookup draft makes chains only", "drop --tree or use a model draft")


@dataclass
class SpecResult(GenerationResult):
    steps: int = 0  # target verification forwards
    accepted: list[int] = field(default_factory=list)  # tokens emitted per step
    verify_s: float = 0.0  # seconds in the target's verification forwards
    spec_tokens: int = 0  # output tokens of the timed speculative rounds (all but the first round)
    spec_s: float = 0.0  # seconds of the timed speculative rounds

    @property
    def tau(self) -> float:
        return sum(self.accepted) / max(self.steps, 1)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update(steps=self.steps, tau=self.tau, verify_s=self.verify_s, spec_tokens=self.spec_tokens,
                 spec_s=self.spec_s)
        return d


class SpeedGuard:
    """Measured check, inside a turn, that speculation beats plain decoding.

    Plain steps are timed when they happen anyway (a plain turn, or ``probe`` plain steps that
    open a speculative turn when no plain step has been timed yet: they produce tokens, so the
    probe costs nothing). After ``window`` timed speculative rounds (a turn's first round warms
    up and is not timed), when the turn's speculative rate (tokens / seconds over those rounds)
    is below the plain rate, the rest of the turn decodes plainly and ``tripped`` is set (until
    the next turn starts). The plain rate is the median of the last 8 plain steps.
    """

    def __init__(self, window: int = 6, probe: int = 2) -> None:
        self.window, self.probe = window, probe
        self.plain: list[float] = []  # seconds per plain step, most recent last
        self.tripped = False

    @property
    def plain_step_s(self) -> float | None:
        return statistics.median(self.plain[-8:]) if self.plain else None

    def observe_plain(self, seconds: float, steps: int = 1) -> None:
        if steps > 0 and seconds > 0:
            self.plain.append(seconds / steps)

    def slower(self, rounds: int, tokens: int, seconds: float) -> bool:
        """True when ``rounds`` speculative rounds making ``tokens`` in ``seconds`` lose to plain."""
        p = self.plain_step_s
        return p is not None and rounds >= self.window and seconds > 0 and tokens / seconds < 1.0 / p


class SpecDecoder:
    """Speculative generation on a target :class:`Engine` with a drafter."""

    def __init__(self, target: Engine, drafter: ModelDrafter, cfg: SpecConfig,
                 observe: Callable[[int | None], None] | None = None, guard: SpeedGuard | None = None) -> None:
        """``observe(rank)`` is called for every verified draft position with the draft rank of
        the target's token (None when outside the tracked ranks): SpecMemo's online model.
        ``guard``: a :class:`SpeedGuard` that may switch the rest of a turn to plain decoding."""
        self.target = target
        self.guard = guard
        self.drafter = drafter
        self.cfg = cfg
        self.verify_s = 0.0
        self.observe = observe or (lambda rank: None)
        drafter.full_logits = cfg.full_logits

    def generate(self, prompt_ids: list[int], max_new_tokens: int = 64,
                 sampling: SamplingConfig | None = None,
                 on_token: Callable[[int], None] | None = None,
                 history: list[int] | None = None) -> SpecResult:
        """Greedy (temperature 0) output equals plain greedy decoding of the target token for
        token; with temperature > 0 the output follows the target's distribution exactly.

        ``history``: the tokens already in the target's cache (a chat's earlier turns);
        ``prompt_ids`` are appended after them.
        """
        sampler = Sampler(sampling or SamplingConfig())
        greedy = sampler.cfg.temperature == 0
        if self.cfg.tree and not greedy:
            raise UserError("tree drafting is greedy-only", "use --temperature 0 or a chain draft")
        eng, t = self.target, Timings(prompt_tokens=len(prompt_ids))
        t0 = time.perf_counter()
        history = list(history or [])
        if len(history) != eng.pos:
            raise ValueError(f"history has {len(history)} tokens but the cache holds {eng.pos}")
        context = history + list(prompt_ids)
        first = sampler(eng.prefill(prompt_ids))
        t.prefill_s = t.ttft_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        verify0 = self.verify_s
        out, accepted, steps, reason = [first], [1], 0, "length"
        context.append(first)
        if first in eng.stop_ids:
            out, reason = [], "eos"
        g = self.guard
        probe = g.probe if g is not None and g.plain_step_s is None else 0
        plain = False
        if g is not None:
            g.tripped = False
        spec_tok, spec_s = 0, 0.0  # over the timed rounds: all but the first (a warm-up)
        while out and len(out) < max_new_tokens and reason == "length":
            room = eng.backend.max_seq_len - eng.pos - 1
            if room < 2:
                reason = "context"
                break
            ts = time.perf_counter()
            speculated = not (plain or probe > 0)
            if not speculated:
                new = [sampler(eng.step([context[-1]])[-1])]
                if probe > 0:
                    probe -= 1
                    g.observe_plain(time.perf_counter() - ts)
            else:
                if self.cfg.tree:
                    new = self._tree_step(context, min(self.cfg.tree[1], room))
                else:
                    new = self._chain_step(context, min(self.cfg.k, room - 1), sampler, greedy)
                steps += 1
                if steps > 1:
                    spec_s += time.perf_counter() - ts
            n_out = len(out)
            for tok in new:
                if tok in eng.stop_ids:
                    reason = "eos"
                    break
                out.append(tok)
                context.append(tok)
                if on_token:
                    on_token(tok)
                if len(out) == max_new_tokens:
                    break
            if speculated:
                accepted.append(len(new))
                if steps > 1:  # the first round warms up new shapes (T = k+1, the draft's depth)
                    spec_tok += len(out) - n_out
                if g is not None and g.slower(steps - 1, spec_tok, spec_s):
                    g.tripped = plain = True
        t.decode_s = time.perf_counter() - t1
        out = out[:max_new_tokens]
        t.new_tokens = len(out)
        text = ""
        if eng.tokenizer:
            full, head = eng.tokenizer.decode(prompt_ids + out), eng.tokenizer.decode(prompt_ids)
            text = full[len(head):] if full.startswith(head) else eng.tokenizer.decode(out)
        return SpecResult(list(prompt_ids), out, text, reason, t, steps=steps, accepted=accepted[1:],
                          verify_s=self.verify_s - verify0, spec_tokens=spec_tok, spec_s=spec_s)

    def _chain_step(self, context: list[int], k: int, sampler: Sampler, greedy: bool) -> list[int]:
        eng = self.target
        start = eng.pos  # == len(context) - 1: context[-1] is not in the target cache yet
        drafts, qs = self.drafter.chain(context, k, None if greedy else sampler)
        tv = time.perf_counter()
        logits = eng.step([context[-1]] + drafts)  # (k+1, V)
        self.verify_s += time.perf_counter() - tv
        new: list[int] = []
        for i, d in enumerate(drafts):
            if greedy:
                tgt = int(torch.argmax(logits[i]))
                top = self.drafter.top[i]
                self.observe(top.index(tgt) if tgt in top else None)
                if tgt != d:
                    new.append(tgt)
                    break
                new.append(d)
            else:
                p = sampler.probs(logits[i])
                q = qs[i]
                if q is None:  # a deterministic draft (LookupDrafter): a point mass at d
                    q = torch.zeros_like(p)
                    q[d] = 1.0
                r = torch.rand((), generator=sampler.gen)
                if float(r) < min(1.0, float(p[d] / q[d])):
                    new.append(d)
                    continue
                resid = torch.clamp(p - q, min=0)
                resid = resid / resid.sum() if float(resid.sum()) > 0 else p
                new.append(int(torch.multinomial(resid, 1, generator=sampler.gen)))
                break
        else:
            new.append(sampler(logits[len(drafts)]))  # all accepted: bonus token from the last row
        # Keep rows for context[-1] and the accepted drafts; the last new token is not fed yet.
        eng.rollback(start + len(new))
        return new

    def _tree_step(self, context: list[int], max_nodes: int) -> list[int]:
        eng = self.target
        start = eng.pos
        b = self.cfg.tree[0]
        tokens, parents = self.drafter.tree(context, b, max_nodes)
        # Greedy acceptance needs only each node's argmax: no T x V logits are kept.
        tv = time.perf_counter()
        if self.cfg.full_logits:
            best = eng.backend.forward_tree(tokens, start, parents).argmax(-1)  # via (T, V)
        else:
            best = eng.backend.forward_tree(tokens, start, parents, argmax_only=True)  # (T,)
        self.verify_s += time.perf_counter() - tv
        children: dict[int, dict[int, int]] = {}
        for i, p in enumerate(parents):
            if p >= 0:
                children.setdefault(p, {})[tokens[i]] = i
        path, node, new = [0], 0, []
        while True:
            tgt = int(best[node])
            new.append(tgt)
            kids = children.get(node, {})
            nxt = kids.get(tgt)
            if kids:  # children are in draft-rank order
                self.observe(list(kids).index(tgt) if nxt is not None else None)
            if nxt is None:
                break
            path.append(nxt)
            node = nxt
        eng.backend.compact(start, path)  # rows of the accepted path -> start, start+1, ...
        eng.pos = start + len(path)
        return new
