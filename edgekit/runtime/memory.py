"""SpecMemo: one memory budget for a whole generation session, weights included.

The manager decides three things before any allocation, from the planner's memory and speed
models (``edgekit.plan.memory`` / ``edgekit.plan.roofline``):

1. whether the budget holds even plain decoding (else ``BudgetError`` naming the minimum);
2. how many KV rows a chat turn needs: prompt + max new tokens + the T-row candidate tail,
   rounded up to ``grow_chunk`` and grown turn by turn, never past the budget;
3. the draft setting: the smallest chain length / tree size whose predicted throughput stays
   >= ``keep`` (96%) of the best unconstrained setting; the acceptance model is corrected online
   from the measured acceptance of each verification.

Example::

    mm = SpecMemo.for_model(lm.model, budget_bytes=64 << 20, draft_kind="early-exit", exit_layer=4)
    spec = mm.choose(context=256)           # SpecConfig(k=...) or a tree
    rows = mm.rows_for_turn(prompt=40, max_new=128, spec=spec)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from edgekit.errors import BudgetError
from edgekit.models.config import ModelArgs
from edgekit.plan.memory import Draft, ModelShape, RuntimeSpec, WeightFormat, estimate_memory
from edgekit.runtime.spec import SpecConfig, SpeedGuard

MIB = 1 << 20
MIN_CHUNK = 8  # smallest prefill chunk the manager shrinks to

# Settings the manager chooses among: chains k=1..8, and top-b trees of T nodes.
CHAINS = [SpecConfig(k=k) for k in range(1, 9)]
TREES = [SpecConfig(tree=(b, t)) for b, t in ((2, 4), (2, 8), (3, 12), (4, 16), (4, 24), (6, 32),
                                              (8, 48), (10, 64))]


def model_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and persistent buffer actually held (tied weights once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + [b for n, b in model.named_buffers() if "qweight" in n or
                                         n.endswith(("scale", "zero"))]:
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


@dataclass
class AcceptanceModel:
    """Probability that the target's token is the draft's r-th choice (r = 0, 1, ...), learnt
    online from verification outcomes, with a prior. Chains accept while rank 0 matches; a
    top-b tree accepts while the rank is < b at every level along the path."""

    prior_alpha: float = 0.6
    ranks: list[float] = field(default_factory=lambda: [0.0] * 16)
    misses: float = 0.0
    n: float = 0.0

    def rank_cdf(self, b: int) -> float:
        """P(target token within the draft's top-b)."""
        if self.n < 8:  # prior: geometric decay of the miss rate with more candidates
            return 1 - (1 - self.prior_alpha) ** (b ** 0.5)
        return sum(self.ranks[:b]) / self.n

    def observe(self, rank: int | None) -> None:
        """Record one verified position: the draft rank of the target token, or None (miss)."""
        self.n += 1
        if rank is None or rank >= len(self.ranks):
            self.misses += 1
        else:
            self.ranks[rank] += 1

    def expected_tokens(self, spec: SpecConfig) -> float:
        """Tokens one verification yields (accepted + the bonus token)."""
        if spec.tree is None:
            a = self.rank_cdf(1)
            return sum(a ** i for i in range(spec.k + 1))
        b, t = spec.tree
        # Levels of the tree: widths grow by b until the node budget runs out; along the
        # accepted path each level offers min(b, width) candidates.
        e, p, used, width = 1.0, 1.0, 1, 1
        while used < t:
            width = min(width * b, t - used)
            used += width
            p *= self.rank_cdf(min(b, width))
            e += p
        return e


class SpecMemo:
    """Budget-driven sizing of the KV cache and the speculative setting for one session.

    ``cost(tokens, layers)`` is the predicted seconds of a forward of ``tokens`` tokens through
    ``layers`` layers (+ head); by default the planner's roofline on ``target`` when given, else
    a memory-bound model in relative units (the weights a forward reads: its layers plus the LM
    head, which an early exit reads too; cost grows 2% per extra token). ``draft_cost_layers``: layers a draft
    step runs (early exit: K; a separate draft: its cost in target-layer equivalents).
    ``draft_weight_bytes``: weights the drafter adds (0 for an eager early exit; an exported
    early-exit draft program duplicates its K layers + head). ``draft_kv_layers``: layers of a
    KV cache the drafter holds apart from the target's (an exported early-exit program: K).
    """

    def __init__(self, args: ModelArgs, budget_bytes: int, *, weight_bytes: int,
                 draft_kind: str = "none", exit_layer: int = 0, draft_weight_bytes: int = 0,
                 draft_cost_layers: float | None = None, draft_kv_layers: int = 0,
                 kv_bytes: float = 4, grow_chunk: int = 64,
                 keep: float = 0.96, runtime: RuntimeSpec | None = None, target=None,
                 prefill_chunk: int = 64) -> None:
        self.args = args
        self.shape = ModelShape.from_args(args, args.arch)
        self.budget = budget_bytes
        self.weight_bytes = weight_bytes
        self.draft_kind = draft_kind
        self.exit_layer = exit_layer
        self.draft_weight_bytes = draft_weight_bytes  # a package's draft program: its own weights
        self.draft_kv_layers = draft_kv_layers  # an exported early-exit draft's own KV layers
        self.draft_layers = draft_cost_layers if draft_cost_layers is not None else (
            exit_layer if draft_kind == "early-exit" else args.n_layers / 4)
        self.kv_bytes = kv_bytes
        self.grow_chunk = grow_chunk
        self.keep = keep
        self.runtime = runtime
        self.target = target
        self.accept = AcceptanceModel()
        self.spec_pays = True  # False once a speculative turn measured slower than plain (observe_speed)
        self.guard = SpeedGuard()  # the in-turn check; plain steps timed in any turn feed it
        self.rows = 0  # KV rows allocated so far
        self.rows_used = 0  # tokens the conversation already holds
        self.prefill_chunk = prefill_chunk  # shrunk when activations would not fit

    @classmethod
    def for_model(cls, model: torch.nn.Module, budget_bytes: int, **kw) -> "SpecMemo":
        return cls(model.args, budget_bytes, weight_bytes=model_weight_bytes(model), **kw)

    # --- memory ---------------------------------------------------------------------------------

    def _draft(self, spec: SpecConfig | None) -> Draft:
        if spec is None or self.draft_kind == "none":
            return Draft()
        kind = self.draft_kind if self.draft_kind in ("early-exit", "lookup") else "model"
        return Draft(kind=kind, length=spec.k if spec.tree is None else 1, exit_layer=self.exit_layer,
                     tree_size=spec.tree[1] if spec.tree else None,
                     shape=self.shape if kind == "model" else None)

    def breakdown(self, rows: int, spec: SpecConfig | None, *, prefill_chunk: int | None = None) -> dict[str, int]:
        """Named byte terms for ``rows`` KV rows and a speculative setting (weights measured).
        Attention runs over all allocated rows, so activations scale with ``rows`` too."""
        m = estimate_memory(self.shape, WeightFormat(bits=32, float_bytes=4), context=rows,
                            kv_bytes=self.kv_bytes, draft=self._draft(spec),
                            prefill_chunk=prefill_chunk or self.prefill_chunk,
                            logits_all=False, runtime=self.runtime)
        terms = {k: v for k, v in m.terms.items() if not k.startswith("weights")}
        if spec is not None and spec.tree is not None and not spec.full_logits:
            # Tree verification keeps argmaxes only (HEAD_ROWS rows of logits at a time).
            from edgekit.runtime.engine import HEAD_ROWS

            terms["logits.verify"] = HEAD_ROWS * self.args.vocab_size * 4
        if spec is not None and self.draft_kv_layers:
            a = self.args
            terms["kv_cache.draft"] = int(rows * self.draft_kv_layers * 2 * a.n_kv_heads * a.head_dim * self.kv_bytes)
        terms["weights"] = self.weight_bytes + self.draft_weight_bytes
        return terms

    def total(self, rows: int, spec: SpecConfig | None) -> int:
        return sum(self.breakdown(rows, spec).values())

    def generation(self, rows: int, spec: SpecConfig | None) -> int:
        """Everything but weights."""
        return sum(v for k, v in self.breakdown(rows, spec).items() if k != "weights")

    def check_plain(self, prompt: int, max_new: int = 1) -> None:
        """Raise ``BudgetError`` (before anything is allocated) when even plain decoding of this
        turn does not fit; the message names the smallest budget that would."""
        rows = min(self.args.max_seq_len, prompt + max_new)
        need = sum(self.breakdown(rows, None, prefill_chunk=MIN_CHUNK).values())
        if need > self.budget:
            raise BudgetError(
                f"budget {self.budget / MIB:.1f} MiB cannot hold plain decoding of {rows} tokens "
                f"(needs {need / MIB:.1f} MiB, weights {self.weight_bytes / MIB:.1f} MiB)",
                f"use --budget-mb {math.ceil(need / MIB)} or more, or quantize the weights")

    def rows_for_turn(self, prompt: int, max_new: int, spec: SpecConfig | None) -> int:
        """KV rows to hold after this turn: the conversation so far + prompt + max_new + T
        (the candidate tail), rounded up to the growth chunk, capped by the model's context and
        the budget. Rows only grow across turns."""
        T = spec.tokens_per_step if spec else 1
        want = min(self.args.max_seq_len, self.rows_used + prompt + max_new + T)
        rows = min(self.args.max_seq_len, -(-want // self.grow_chunk) * self.grow_chunk)
        while rows - self.grow_chunk >= want and self.total(rows, spec) > self.budget:
            rows -= self.grow_chunk
        rows = max(rows, want)
        # Smaller prefill chunks trade TTFT for activation memory.
        while self.total(rows, spec) > self.budget and self.prefill_chunk > MIN_CHUNK:
            self.prefill_chunk //= 2
        if self.total(rows, spec) > self.budget:
            self.check_plain(self.rows_used + prompt, max_new)
            raise BudgetError(f"budget {self.budget / MIB:.1f} MiB cannot hold this turn with "
                              f"speculation (T={T})", "raise --budget-mb or use --draft none")
        self.rows = max(self.rows, rows)
        return self.rows

    # --- speed ----------------------------------------------------------------------------------

    def cost(self, tokens: int, layers: float) -> float:
        """Predicted seconds (or relative units) of a forward of ``tokens`` tokens."""
        if self.target is not None:
            from edgekit.plan.roofline import forward_time

            sh = self.shape.replace(n_layers=max(1, round(layers)))
            return forward_time(sh, WeightFormat(bits=32, float_bytes=4), self.target, tokens=tokens,
                                context=max(self.rows_used, 64), kv_bytes=self.kv_bytes).seconds
        # relative units: weights read, a layer's linears per layer plus the head every forward
        sh = self.shape
        per_layer = sum(o * i for o, i in sh.attention_matrices() + sh.ffn_matrices())
        head = sh.vocab_size * sh.dim
        return (layers * per_layer + head) / (sh.n_layers * per_layer + head) * (1.0 + 0.02 * (tokens - 1))

    @staticmethod
    def tree_levels(spec: SpecConfig) -> int:
        """Draft forwards needed to grow a top-b tree to T nodes (one per level)."""
        b, t = spec.tree
        used, width, levels = 1, 1, 0
        while used < t:
            width = min(width * b, t - used)
            used += width
            levels += 1
        return max(levels, 1)

    def predicted_tok_s(self, spec: SpecConfig | None) -> float:
        """Predicted tokens per second (relative units without a target)."""
        L = self.args.n_layers
        if spec is None or self.draft_kind == "none":
            return 1.0 / self.cost(1, L)
        e = self.accept.expected_tokens(spec)
        if spec.tree is None:
            draft = 0.0 if self.draft_kind == "lookup" else self.cost(1, self.draft_layers)  # a list search
            t = spec.k * draft + self.cost(spec.k + 1, L)
        else:
            T = spec.tree[1]
            t = self.tree_levels(spec) * self.cost(T, self.draft_layers) + self.cost(T, L)
        return e / t

    def observe_speed(self, new_tokens: int, decode_s: float, steps: int, verify_s: float) -> None:
        """Online check of the cost model after a speculative turn: its measured rate against
        plain decoding estimated from the same turn (one target forward per verification step
        is at least a plain step's cost: ``steps / verify_s`` tokens/s). When speculation was
        slower, later turns decode plainly (``spec_pays`` False). A turn the in-turn
        :class:`SpeedGuard` finished plainly does not decide this: acceptance varies between
        turns, so the next turn speculates again (and its guard judges it again)."""
        if steps < 4 or decode_s <= 0 or verify_s <= 0:
            return
        if new_tokens / decode_s < steps / verify_s:
            self.spec_pays = False

    def choose(self, context: int, options: list[SpecConfig] | None = None) -> SpecConfig | None:
        """The smallest-memory setting whose predicted throughput is within ``keep`` of the best
        of all ``options`` (the unconstrained choice) and that fits the budget at ``context``
        rows. Falls back to the fastest setting that fits, or None (plain decoding): also None
        when plain decoding is predicted faster than every option."""
        if self.draft_kind == "none":
            return None
        options = options or (CHAINS + TREES)
        if self.draft_kind == "lookup":  # chains only
            options = [o for o in options if o.tree is None]
        speed = {id(o): self.predicted_tok_s(o) for o in options}
        best = max(speed.values())
        if best <= self.predicted_tok_s(None) or not self.spec_pays:
            return None  # no draft setting beats plain decoding (predicted, or measured: observe_speed)
        fits = [o for o in options if self.total(context + o.tokens_per_step, o) <= self.budget]
        good = [o for o in fits if speed[id(o)] >= self.keep * best]
        if good:
            return min(good, key=lambda o: (self.generation(context + o.tokens_per_step, o), o.tokens_per_step))
        return max(fits, key=lambda o: speed[id(o)]) if fits else None
