"""Multi-turn chat under one SpecMemo memory budget: history kept, KV reused and grown per turn.

Example::

    s = ChatSession(lm=lm, budget_mb=8, draft="early-exit:4")
    r = s.turn("Once upon a time", max_new_tokens=64)
    r2 = s.turn(" The next day", max_new_tokens=64)   # KV of turn 1 reused
    s.report()["memory"]                                # per-term bytes
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgekit.errors import BudgetError, UserError
from edgekit.models.load import LoadedModel
from edgekit.runtime.engine import EagerBackend, Engine, GenerationResult, SamplingConfig
from edgekit.runtime.memory import CHAINS, MIB, TREES, SpecMemo, model_weight_bytes
from edgekit.runtime.spec import EarlyExitBackend, LookupDrafter, ModelDrafter, SpecConfig, SpecDecoder


def parse_draft(spec: str, n_layers: int) -> tuple[str, int]:
    """``none`` | ``early-exit:K`` | ``self-quant:BITS`` | ``lookup[:N]`` | a model path ->
    (kind, int arg); lookup's arg is its longest n-gram (default 3)."""
    if spec in ("", "none"):
        return "none", 0
    kind, _, arg = spec.partition(":")
    if kind == "lookup":
        if arg and not (arg.isdigit() and 1 <= int(arg) <= 8):
            raise UserError(f"bad draft {spec!r}", "use lookup or lookup:N with N in 1..8 (longest n-gram)")
        return "lookup", int(arg or 3)
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


def quantized_copy(model, bits: int):
    """A round-to-nearest w4 (g32) or w8 copy of ``model`` with its own KV cache: the quantized
    self-draft. Costs the packed weights (the float embedding is shared)."""
    import copy

    from edgekit.quant.api import quantize_
    from edgekit.quant.config import preset_config

    emb = model.tok_embeddings
    model.tok_embeddings = None  # share, don't copy, the float embedding
    try:
        dm = copy.deepcopy(model)
    finally:
        model.tok_embeddings = emb
    dm.tok_embeddings = emb
    if model.args.tie_embeddings:
        dm.output.weight = emb.weight
    return quantize_(dm, preset_config("w4g32" if bits == 4 else "w8", method="rtn")).eval()


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
    """A target + optional drafter under ``budget_mb`` (None: unconstrained).

    ``lm``: a loaded checkpoint (eager target; the KV cache grows per turn as SpecMemo sizes it)
    or ``package``: an exported package (ExecuTorch / onnxruntime target; its KV size was fixed
    at export, so the budget is checked against it). Package targets verify chains with a
    separate draft package (``draft`` = its path; a w4/w8 package of the same model is the
    quantized self-draft) or with the package's own early-exit draft program
    (``draft="early-exit:K"``, written by ``edgekit export --draft-exit K``; its weights and
    K-layer cache count in the budget). Trees (``spec.tree``, or SpecMemo's choice) need
    programs exported with ``--tree-verify``, target and draft: the ExecuTorch ``verify_tree`` /
    ``compact`` methods or the ONNX ``attention_mask`` input (``backend.supports_tree``).
    """

    lm: LoadedModel | None = None
    budget_mb: float | None = None
    draft: str = "none"
    spec: SpecConfig | None = None  # fixed setting; None lets SpecMemo choose per turn
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    draft_model: LoadedModel | None = None
    grow_chunk: int = 64
    package: object | None = None
    backend: str | None = None
    threads: int | None = None
    # SpeedGuard (in-turn check against timed plain steps): None = on when SpecMemo chooses the
    # setting (a budget and no fixed ``spec``); True / False force it on / off.
    guard: bool | None = None

    def __post_init__(self) -> None:
        if (self.lm is None) == (self.package is None):
            raise ValueError("give exactly one of lm= or package=")
        self.resizable = self.lm is not None
        if self.resizable:
            m = self.lm.model
            args, tok = self.lm.args, self.lm.tokenizer
            self.engine = Engine(EagerBackend(m), tok)
        else:
            pkg = self.package
            args, tok = pkg.args, pkg.tokenizer
            self.engine = pkg.engine(self.backend, threads=self.threads)
        self.args, self.tokenizer = args, tok
        kind, arg = parse_draft(self.draft, args.n_layers)
        self.kind = kind
        self.drafter = None
        extra = 0
        if not self.resizable and kind == "self-quant":
            raise UserError(f"--draft {self.draft} needs the eager target",
                            "export a --quant w4g32/w8 package of the same model and pass its path as --draft")
        tree_ok = self.resizable or getattr(self.engine.backend, "supports_tree", False)
        if not tree_ok and self.spec is not None and self.spec.tree is not None:
            raise UserError("this package's program cannot verify trees",
                            "re-export with `edgekit export --tree-verify`, drop --tree, or pass the checkpoint")
        draft_kv_layers = 0
        if kind == "early-exit" and not self.resizable:
            # The package's early-exit program: own weights and own K-layer cache, re-synced by
            # common prefix like any separate draft.
            name = f"early-exit:{arg}"
            self.drafter = ModelDrafter(self.package.draft_backend(name, self.backend, self.threads))
            extra = int(self.package.drafts[name].get("weight_bytes") or self.package.drafts[name]["size"])
            draft_kv_layers = arg
        elif kind == "early-exit":
            self.drafter = ModelDrafter(EarlyExitBackend(self.lm.model, arg), shared_with=self.engine)
        elif kind == "self-quant":
            self.drafter = ModelDrafter(EagerBackend(quantized_copy(self.lm.model, bits=arg)))
        elif kind == "model":
            self.drafter = ModelDrafter(self._load_draft(self.draft))
        elif kind == "lookup":
            self.drafter = LookupDrafter(max_ngram=arg)
            if self.spec is not None and self.spec.tree is not None:
                raise UserError("the lookup draft makes chains only", "drop --tree, or use --draft-k K")
        self.tree_ok = tree_ok and kind != "lookup" and (self.drafter is None or self.resizable
                                                         or getattr(self.drafter.backend, "supports_tree", False))
        if self.spec is not None and self.spec.tree is not None and not self.resizable:
            if not self.tree_ok:
                raise UserError("the draft program cannot grow trees",
                                "re-export the draft with --tree-verify, or use a chain (--draft-k)")
            if self.spec.tree[1] > self.engine.backend.max_chunk:
                raise UserError(f"tree of {self.spec.tree[1]} nodes > the program's max_chunk "
                                f"{self.engine.backend.max_chunk}", "use a smaller --tree B,T")
        if self.drafter is not None:
            if getattr(self.drafter.backend, "vocab_size", args.vocab_size) != args.vocab_size:
                raise UserError("the draft's vocabulary differs from the target's",
                                "use a draft that shares the target's tokenizer")
            if kind not in ("early-exit", "lookup"):
                extra = self._backend_weight_bytes(self.drafter.backend)
        budget = int(self.budget_mb * MIB) if self.budget_mb else None
        weights = model_weight_bytes(self.lm.model) if self.resizable else self.package.weight_bytes()
        self.memo = SpecMemo(args, budget or (1 << 62), weight_bytes=weights, draft_kind=kind,
                             exit_layer=arg, draft_weight_bytes=extra, draft_kv_layers=draft_kv_layers,
                             grow_chunk=self.grow_chunk)
        self.managed = budget is not None
        if self.resizable:
            self.memo.check_plain(prompt=1, max_new=1)  # before any allocation
        if not self.resizable:
            self.memo.rows = args.max_seq_len
            if self.managed:  # the exported cache is static: it must fit as it is
                spec = self.spec or (SpecConfig(k=1) if self.drafter else None)
                need = self.memo.total(args.max_seq_len, spec)
                if need > budget:
                    raise BudgetError(f"package {self.package.dir} holds a {args.max_seq_len}-row KV cache; "
                                      f"with weights it needs {need / MIB:.1f} MiB > budget {self.budget_mb} MiB",
                                      f"use --budget-mb {-(-need // MIB)} or re-export with a smaller --max-seq-len")
        self.history: list[int] = []  # tokens in the target cache
        self.pending: list[int] = []  # generated but not yet fed (the last token of a turn)
        self.turns: list[TurnRecord] = []
        if self.resizable:
            if self.managed:
                self._resize(0)
            else:
                self.memo.rows = args.max_seq_len

    def _load_draft(self, path: str):
        from pathlib import Path

        p = Path(path)
        if (p / "manifest.json").exists():
            from edgekit.runtime.package import load_package

            return load_package(p).backend(self.backend, threads=self.threads)
        if self.draft_model is None:
            from edgekit.models.load import load_model

            self.draft_model = load_model(p, max_seq_len=self.args.max_seq_len)
        return EagerBackend(self.draft_model.model)

    @staticmethod
    def _backend_weight_bytes(be) -> int:
        if hasattr(be, "model"):
            return model_weight_bytes(be.model)
        return int(getattr(be, "path").stat().st_size) if hasattr(be, "path") else 0

    def _resize(self, rows: int) -> None:
        rows = max(rows, 1)
        self.lm.model.resize_cache(rows)
        be = getattr(self.drafter, "backend", None)
        if be is not None and self.kind != "early-exit" and hasattr(be, "model"):
            be.model.resize_cache(rows)

    @property
    def kv_rows(self) -> int:
        return self.lm.model.cache_len if self.resizable else self.args.max_seq_len

    def reset(self) -> None:
        """Forget the conversation (a new one starts at cache slot 0); allocations are kept."""
        self.engine.reset()
        if self.drafter is not None:
            self.drafter.fed = []
        self.history, self.pending, self.turns = [], [], []
        self.memo.rows_used = 0

    def turn(self, text: str, max_new_tokens: int = 64, on_token=None) -> GenerationResult:
        """Append ``text`` (after any pending token) and generate; the KV of earlier turns stays."""
        first = not self.history and not self.pending
        ids = self.pending + self.tokenizer.encode(text, bos=first)
        self.memo.rows_used = len(self.history)
        spec = self.spec
        if self.drafter is not None and spec is None:
            opts = None
            if not self.resizable:
                mc = self.engine.backend.max_chunk
                opts = [o for o in CHAINS + (TREES if self.tree_ok else []) if o.tokens_per_step <= mc]
            spec = self.memo.choose(len(self.history) + len(ids) + max_new_tokens, opts)
        self.current_spec = spec
        if self.resizable and self.managed:
            rows = self.memo.rows_for_turn(len(ids), max_new_tokens, spec)
            if rows != self.lm.model.cache_len:
                self._resize(rows)
            for be in (self.engine.backend, getattr(self.drafter, "backend", None)):
                if be is not None:
                    be.max_chunk = self.memo.prefill_chunk
        if self.drafter is None or spec is None:
            res = self.engine.generate(ids, max_new_tokens, self.sampling, on_token=on_token)
            tau, label = 1.0, "none"
            self.memo.guard.observe_plain(res.timings.decode_s, res.timings.new_tokens - 1)
        else:
            on = self.guard if self.guard is not None else (self.managed and self.spec is None)
            dec = SpecDecoder(self.engine, self.drafter, spec, observe=self.memo.accept.observe,
                              guard=self.memo.guard if on else None)
            res = dec.generate(ids, max_new_tokens, self.sampling, on_token=on_token, history=self.history)
            tau = res.tau
            tripped = dec.guard is not None and self.memo.guard.tripped
            if self.managed and not tripped:  # a tripped turn was judged by its guard already
                self.memo.observe_speed(res.timings.new_tokens - 1, res.timings.decode_s, res.steps, res.verify_s)
            label = f"tree {spec.tree[0]}x{spec.tree[1]}" if spec.tree else f"chain k={spec.k}"
            if tripped:
                label += f", plain after {res.steps} rounds"
        # The cache holds a prefix of the conversation (a stop token's row is dropped); what
        # is past it is fed at the start of the next turn.
        full = self.history + ids + res.tokens
        if self.engine.pos > len(full):
            self.engine.rollback(len(full))
        self.history, self.pending = full[: self.engine.pos], full[self.engine.pos:]
        t = res.timings.to_dict()
        self.turns.append(TurnRecord(len(ids), len(res.tokens), label, tau, self.kv_rows, t["decode_tok_s"]))
        return res

    def report(self) -> dict:
        """Memory breakdown of the current allocation and per-turn numbers."""
        spec = getattr(self, "current_spec", self.spec)
        terms = self.memo.breakdown(self.kv_rows, spec)
        return {"budget_bytes": self.memo.budget if self.managed else None,
                "kv_rows": self.kv_rows, "memory": terms,
                "generation_bytes": sum(v for k, v in terms.items() if k != "weights"),
                "spec": None if spec is None else (list(spec.tree) if spec.tree else spec.k),
                "turns": [t.__dict__ for t in self.turns]}
