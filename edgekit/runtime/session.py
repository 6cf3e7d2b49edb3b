"""Multi-turn chat under one SpecMemo memory budget: history kept, KV reused and grown per turn.

Example::

    s = ChatSession(lm, budget_mb=8, draft="early-exit:4")
    r = s.turn("Once upon a time", max_new_tokens=64)
    r2 = s.turn(" The next day", max_new_tokens=64)   # KV of turn 1 reused
    s.report()["memory"]                                # per-term bytes
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgekit.errors import UserError
from edgekit.models.load import LoadedModel
from edgekit.runtime.engine import EagerBackend, Engine, GenerationResult, SamplingConfig
from edgekit.runtime.memory import MIB, SpecMemo
from edgekit.runtime.spec import EarlyExitBackend, ModelDrafter, SpecConfig, SpecDecoder


def parse_draft(spec: str, n_layers: int) -> tuple[str, int]:
    """``none`` | ``early-exit:K`` | ``self-quant:BITS`` | a model path -> (kind, int arg)."""
    if spec in ("", "none"):
        return "none", 0
    kind, _, arg = spec.partition(":")
    if kind == "early-exit":
        try:
            k = int(arg)
        except ValueError:
            raise UserError(f"bad draft {spec!r}", "use early-exit:K, e.g. early-exit:2") from None
        if not 1 <= k < n_layers:
            raise UserError(f"early-exit depth {k} outside [1, {n_layers - 1}]",
                            f"use early-exit:K with K < {n_layers}")
        return "early-exit", k
    if kind == "self-quant":
        if arg not in ("4", "8", "w4", "w8"):
            raise UserError(f"bad draft {spec!r}", "use self-quant:w4 or self-quant:w8")
        return "self-quant", int(arg.lstrip("w"))
    return "model", 0


@dataclass
class TurnRecord:
    prompt_tokens: int
    new_tokens: int
    spec: str
    tau: float
    kv_rows: int
    tok_s: float | None


@dataclass
class ChatSession:
    """Eager target + optional drafter under ``budget_mb`` (None: unconstrained, full KV)."""

    lm: LoadedModel
    budget_mb: float | None = None
    draft: str = "none"
    spec: SpecConfig | None = None  # fixed setting; None lets SpecMemo choose per turn
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    draft_model: LoadedModel | None = None
    grow_chunk: int = 64

    def __post_init__(self) -> None:
        m = self.lm.model
        kind, arg = parse_draft(self.draft, m.args.n_layers)
        self.kind = kind
        self.engine = Engine(EagerBackend(m), self.lm.tokenizer)
        self.drafter = None
        extra = 0
        if kind == "early-exit":
            self.drafter = ModelDrafter(EarlyExitBackend(m, arg), shared_with=self.engine)
        elif kind == "self-quant":
            from edgekit.quant.api import quantized_copy  # a w4/w8 copy of the target

            dm = quantized_copy(m, bits=arg)
            self.draft_model_obj = dm
            self.drafter = ModelDrafter(EagerBackend(dm))
        elif kind == "model":
            if self.draft_model is None:
                from edgekit.models.load import load_model

                self.draft_model = load_model(self.draft, max_seq_len=m.args.max_seq_len)
            if self.draft_model.args.vocab_size != m.args.vocab_size:
                raise UserError("the draft model's vocabulary differs from the target's",
                                "use a draft that shares the target's tokenizer")
            self.drafter = ModelDrafter(EagerBackend(self.draft_model.model))
        if self.drafter is not None and kind != "early-exit":
            from edgekit.runtime.memory import model_weight_bytes

            extra = model_weight_bytes(self.drafter.backend.model)
        budget = int(self.budget_mb * MIB) if self.budget_mb else None
        self.memo = SpecMemo.for_model(m, budget or (1 << 62), draft_kind=kind, exit_layer=arg,
                                       draft_weight_bytes=extra, grow_chunk=self.grow_chunk)
        self.managed = budget is not None
        self.memo.check_plain(prompt=1, max_new=1)  # before any allocation
        self.history: list[int] = []  # tokens in the target cache
        self.pending: list[int] = []  # generated but not yet fed (the last token of a turn)
        self.turns: list[TurnRecord] = []
        if self.managed:
            self._resize(0)
        else:
            self.memo.rows = m.args.max_seq_len

    def _resize(self, rows: int) -> None:
        rows = max(rows, 1)
        self.lm.model.resize_cache(rows)
        if self.drafter is not None and self.kind != "early-exit":
            self.drafter.backend.model.resize_cache(rows)

    def turn(self, text: str, max_new_tokens: int = 64, on_token=None) -> GenerationResult:
        """Append ``text`` (after any pending token) and generate; the KV of earlier turns stays."""
        first = not self.history and not self.pending
        ids = self.pending + self.lm.tokenizer.encode(text, bos=first)
        self.memo.rows_used = len(self.history)
        spec = self.spec
        if self.drafter is not None and spec is None:
            spec = self.memo.choose(len(self.history) + len(ids) + max_new_tokens)
        self.current_spec = spec
        if self.managed:
            rows = self.memo.rows_for_turn(len(ids), max_new_tokens, spec)
            if rows != self.lm.model.cache_len:
                self._resize(rows)
            for be in (self.engine.backend, getattr(self.drafter, "backend", None)):
                if be is not None:
                    be.max_chunk = self.memo.prefill_chunk
        if self.drafter is None or spec is None:
            res = self.engine.generate(ids, max_new_tokens, self.sampling, on_token=on_token)
            tau, label = 1.0, "none"
        else:
            dec = SpecDecoder(self.engine, self.drafter, spec, observe=self.memo.accept.observe)
            res = dec.generate(ids, max_new_tokens, self.sampling, on_token=on_token, history=self.history)
            tau = res.tau
            label = f"tree {spec.tree[0]}x{spec.tree[1]}" if spec.tree else f"chain k={spec.k}"
        # The cache holds a prefix of the conversation (a stop token's row is dropped); what
        # is past it is fed at the start of the next turn.
        full = self.history + ids + res.tokens
        if self.engine.pos > len(full):
            self.engine.rollback(len(full))
        self.history, self.pending = full[: self.engine.pos], full[self.engine.pos:]
        t = res.timings.to_dict()
        self.turns.append(TurnRecord(len(ids), len(res.tokens), label, tau, self.lm.model.cache_len,
                                     t["decode_tok_s"]))
        return res

    def report(self) -> dict:
        """Memory breakdown of the current allocation and per-turn numbers."""
        spec = getattr(self, "current_spec", self.spec)
        terms = self.memo.breakdown(self.lm.model.cache_len, spec)
        return {"budget_bytes": self.memo.budget if self.managed else None,
                "kv_rows": self.lm.model.cache_len, "memory": terms,
                "generation_bytes": sum(v for k, v in terms.items() if k != "weights"),
                "spec": None if spec is None else (list(spec.tree) if spec.tree else spec.k),
                "turns": [t.__dict__ for t in self.turns]}
