"""``quantize_``: swap a reference Transformer's linears for packed-weight modules, in place.

Without calibration tokens each linear is rounded to nearest independently (``method="rtn"``
only). With them, the model is processed block by block (one transformer layer at a time, in
the order wq/wk/wv -> wo -> w1/w3 -> w2 inside a layer): every linear's Hessian
``H = X^T X / n`` (fp64) is gathered from the inputs it sees when the calibration windows run
through the *already quantized* earlier layers and sub-layers, then the layer is solved with
the configured method. decoupleQ's optional block stage (``block_steps > 0``) then freezes the
codes and tunes scale, zero and the block's RMSNorm gains with Adam so the quantized block
reproduces the float block's outputs on the same inputs; the result is kept only if the block
output error drops.

Example::

    from edgekit.quant import quantize_, preset_config, calibration_tokens
    cfg = preset_config("w2g64", method="decoupleq")
    calib = calibration_tokens(lm.tokenizer, text, cfg.calib_samples, cfg.calib_seq_len, cfg.seed)
    quantize_(lm.model, cfg, calib)
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.errors import UserError
from edgekit.quant.config import QuantConfig
from edgekit.quant.layout import Layout, dequantize_codes, unpack_torch
from edgekit.quant.modules import PACKED_LINEAR, PackedEmbedding, _PackedLinear, set_act_bits
from edgekit.quant.solvers import quantize_weight

BLOCK_LINEARS = ["attention.wq", "attention.wk", "attention.wv", "attention.wo",
                 "feed_forward.w1", "feed_forward.w3", "feed_forward.w2"]
# Sub-layer stages: linears in one stage share their input, so one H serves the stage.
STAGES = [["attention.wq", "attention.wk", "attention.wv"], ["attention.wo"],
          ["feed_forward.w1", "feed_forward.w3"], ["feed_forward.w2"]]


def quantized_module_names(model: nn.Module, config: QuantConfig) -> list[str]:
    """Fully qualified names of the linears ``quantize_`` replaces (head last if head_bits)."""
    names = [f"layers.{i}.{n}" for i in range(len(model.layers)) for n in BLOCK_LINEARS]
    names = [n for n in names if n not in set(config.skip)]
    if config.head_bits is not None and "output" not in config.skip:
        names.append("output")
    return names


def _get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _layer_bits(config: QuantConfig, name: str) -> tuple[int, int | None]:
    if name == "output":
        return config.head_bits, config.head_group_size if config.head_group_size is not None else config.group_size
    return config.bits, config.group_size


def _untie_head(model: nn.Module) -> None:
    """Give the LM head its own weight tensor (a tied head shares the embedding's)."""
    if model.output.weight is model.tok_embeddings.weight:
        model.output.weight = nn.Parameter(model.tok_embeddings.weight.detach().clone(), requires_grad=False)


def prepare_skeleton(model: nn.Module, config: QuantConfig, names: list[str]) -> None:
    """Replace modules by empty packed modules of the right shapes (used when loading a
    quantized checkpoint: the state dict fills them)."""
    for name in names:
        lin = _get(model, name)
        bits, gs = _layer_bits(config, name)
        _set(model, name, PACKED_LINEAR[bits](lin.in_features, lin.out_features, gs, lin.bias is not None))
    if config.embedding_bits is not None:
        emb = model.tok_embeddings
        gs = config.embedding_group_size if config.embedding_group_size is not None else config.group_size
        model.tok_embeddings = PackedEmbedding(emb.num_embeddings, emb.embedding_dim, config.embedding_bits, gs)


@contextlib.contextmanager
def _batch_cache(block: nn.Module, batch: int, seq_len: int) -> Iterator[None]:
    """Temporarily give a block a KV cache of (batch, n_kv, seq_len, hd) for calibration runs."""
    c = block.attention.kv_cache
    k, v = c.k_cache, c.v_cache
    shape = (batch, k.shape[1], seq_len, k.shape[3])
    c.k_cache, c.v_cache = k.new_zeros(shape), v.new_zeros(shape)
    try:
        yield
    finally:
        c.k_cache, c.v_cache = k, v


class _HessianHook:
    """Accumulates sum x^T x (fp64) of a module's input rows."""

    def __init__(self, dim: int) -> None:
        self.sum = torch.zeros((dim, dim), dtype=torch.float64)
        self.n = 0

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        self.sum += (x.T @ x).double()
        self.n += x.shape[0]

    @property
    def H(self) -> torch.Tensor:
        return self.sum / max(self.n, 1)


class _TrainableQLinear(nn.Module):
    """Frozen codes, trainable fp32 scale/zero: the decoupleQ block stage's view of a layer."""

    def __init__(self, packed: _PackedLinear) -> None:
        super().__init__()
        self.layout = packed.layout
        K = packed.in_features
        self.register_buffer("codes", unpack_torch(packed.qweight, K, packed.layout).float())
        self.scale = nn.Parameter(packed.scale.float().clone())
        self.zero = nn.Parameter(packed.zero.float().clone())
        self.bias = packed.bias
        self.cls = type(packed)
        self.group_size = packed.group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, dequantize_codes(self.codes, self.scale, self.zero, self.layout), self.bias)

    def to_packed(self) -> _PackedLinear:
        return self.cls.from_codes(self.codes.long(), self.scale.detach(), self.zero.detach(),
                                   self.group_size, self.bias)


def _run_block(block: nn.Module, hs: list[torch.Tensor], rope: tuple) -> list[torch.Tensor]:
    cos, sin, pos, mask = rope
    out = []
    for h in hs:
        with _batch_cache(block, h.shape[0], h.shape[1]):
            out.append(block(h, cos, sin, pos, mask))
    return out


class _Stop(Exception):
    pass


def _hessian(xs: list[torch.Tensor]) -> torch.Tensor:
    hook = _HessianHook(xs[0].shape[-1])
    for x in xs:
        hook(None, (x,))
    return hook.H


def _quantize_block(block: nn.Module, li: int, hs: list[torch.Tensor], rope: tuple, wanted: set[str],
                    replace: Callable[[str, torch.Tensor], None]) -> list[torch.Tensor]:
    """Quantize one transformer block's linears in the order of the computation, each from the
    inputs produced by the already-quantized parts, and return the block's (quantized) outputs.

    Follows ``edgekit.models.llama.Block``: h = x + wo(attn(norm1 x)); out = h + w2(silu(w1 n) * w3 n)
    with n = norm2 h. Attention runs once (up to wo's input, captured by a hook).
    """
    cos, sin, pos, mask = rope
    att, ff = block.attention, block.feed_forward

    def maybe(names: list[str], xs: list[torch.Tensor]) -> None:
        todo = [n for n in names if f"layers.{li}.{n}" in wanted]
        if todo:
            H = _hessian(xs)
            for n in todo:
                replace(f"layers.{li}.{n}", H)

    maybe(STAGES[0], [block.attention_norm(x) for x in hs])
    wo_in: list[torch.Tensor] = []

    def grab(module: nn.Module, args: tuple) -> None:
        wo_in.append(args[0].detach())
        raise _Stop

    handle = att.wo.register_forward_pre_hook(grab)
    try:
        for x in hs:
            with _batch_cache(block, x.shape[0], x.shape[1]):
                try:
                    att(block.attention_norm(x), cos, sin, pos, mask)
                except _Stop:
                    pass
    finally:
        handle.remove()
    maybe(STAGES[1], wo_in)
    mids = [x + att.wo(a) for x, a in zip(hs, wo_in)]
    del wo_in
    ff_in = [block.ffn_norm(h) for h in mids]
    maybe(STAGES[2], ff_in)
    acts = [F.silu(ff.w1(n)) * ff.w3(n) for n in ff_in]
    maybe(STAGES[3], acts)
    return [h + ff.w2(a) for h, a in zip(mids, acts)]


def _block_stage(block: nn.Module, hs: list[torch.Tensor], targets: list[torch.Tensor], rope: tuple,
                 steps: int, lr: float, seed: int) -> tuple[float, float]:
    """Tune scale/zero (+ norm gains) of a quantized block so that block(hs) matches ``targets``.
    Returns (mse before, mse after); the block is left unchanged if the error did not drop."""
    with torch.no_grad():

        def mse() -> float:
            outs = _run_block(block, hs, rope)
            return float(sum(F.mse_loss(o, t, reduction="sum") for o, t in zip(outs, targets))
                         / sum(t.numel() for t in targets))

        before = mse()
    saved_norms = {n: p.detach().clone() for n, p in block.named_parameters() if n.endswith("norm.weight")}
    saved_packed = {n: _get(block, n) for n in BLOCK_LINEARS if isinstance(_get(block, n), _PackedLinear)}
    trainables = {n: _TrainableQLinear(m) for n, m in saved_packed.items()}
    for n, m in trainables.items():
        _set(block, n, m)
    params = [p for m in trainables.values() for p in (m.scale, m.zero)]
    norm_params = [p for n, p in block.named_parameters() if n.endswith("norm.weight")]
    flags = {id(p): p.requires_grad for p in norm_params}
    for p in norm_params:
        p.requires_grad_(True)
    opt = torch.optim.Adam([{"params": params, "lr": lr}, {"params": norm_params, "lr": lr}])
    gen = torch.Generator().manual_seed(seed)
    cos, sin, pos, mask = rope
    with torch.enable_grad():
        for _ in range(steps):
            i = int(torch.randint(0, len(hs), (1,), generator=gen))
            with _batch_cache(block, hs[i].shape[0], hs[i].shape[1]):
                loss = F.mse_loss(block(hs[i], cos, sin, pos, mask), targets[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for p in norm_params:
        p.requires_grad_(flags[id(p)])
    for n, m in trainables.items():  # back to fp16 packed storage before judging
        _set(block, n, m.to_packed())
    with torch.no_grad():
        after = mse()
        if not after < before:
            for n, m in saved_packed.items():
                _set(block, n, m)
            for n, p in block.named_parameters():
                if n in saved_norms:
                    p.copy_(saved_norms[n])
            after = before
    return before, after


@torch.no_grad()
def quantize_(model: nn.Module, config: QuantConfig, calib: torch.Tensor | None = None, *,
              batch_size: int = 8, advance: Callable[[int], None] | None = None,
              log: Callable[[str], None] | None = None) -> nn.Module:
    """Quantize ``model`` (an ``edgekit.models.llama.Transformer``) in place and return it.

    Args:
        model: float reference model; its ``layers.N.attention.w{q,k,v,o}``,
            ``layers.N.feed_forward.w{1,2,3}`` (and ``output`` / ``tok_embeddings`` when
            ``head_bits`` / ``embedding_bits`` are set) become ``PackedLinearW{bits}`` /
            ``PackedEmbedding`` modules.
        config: a ``QuantConfig`` (see ``preset_config``).
        calib: calibration tokens (n, L) int64, required for gptq/decoupleq; with rtn they make
            the shrink search H-weighted.
        batch_size: calibration windows per forward (memory vs speed).
        advance: progress callback, called with 1 per quantized linear.
        log: optional line logger (block-stage errors).

    Raises:
        UserError: the method needs calibration tokens and none were given, or the model is
            already quantized.
    """
    if any(isinstance(m, (_PackedLinear, PackedEmbedding)) for m in model.modules()):
        raise UserError("the model is already quantized", "quantize the float checkpoint instead")
    if config.needs_calibration and calib is None:
        raise UserError(f"method {config.method!r} needs calibration data", "pass --calib FILE (a text file)")
    tied = model.output.weight is model.tok_embeddings.weight
    names = quantized_module_names(model, config)
    if tied and (config.head_bits is not None or config.embedding_bits is not None):
        _untie_head(model)
    if config.embedding_bits is not None:
        gs = config.embedding_group_size if config.embedding_group_size is not None else config.group_size
        model.tok_embeddings = PackedEmbedding.from_float(model.tok_embeddings, config.embedding_bits, gs)
    kw = dict(damp=config.damp, act_order=config.act_order, block_size=config.block_size,
              rounds=config.rounds, grid=config.grid)

    def replace(name: str, H: torch.Tensor | None) -> None:
        lin = _get(model, name)
        bits, gs = _layer_bits(config, name)
        method = config.method if H is not None else "rtn"
        _set(model, name, PACKED_LINEAR[bits].from_float(lin, gs, H, method, **kw))
        if advance:
            advance(1)

    if calib is None:
        for name in names:
            replace(name, None)
        set_act_bits(model, config.act_bits)
        return model

    calib = calib.to(torch.long)
    L = calib.shape[1]
    if L > model.args.max_seq_len:
        raise UserError(f"calibration length {L} exceeds the model's context {model.args.max_seq_len}",
                        "use a smaller --calib-seq-len")
    pos = torch.arange(L)
    causal = torch.where(pos[None, :] <= pos[:, None], 0.0, float("-inf"))  # (L, L)
    rope = (model.rope_cos[:L], model.rope_sin[:L], pos, causal)
    hs = [model.tok_embeddings(calib[i:i + batch_size]).float() for i in range(0, calib.shape[0], batch_size)]
    wanted = set(names)
    hs_float = hs
    for li, block in enumerate(model.layers):
        stage = config.block_steps > 0 and config.method == "decoupleq"
        if stage:
            float_block = copy.deepcopy(block)
            # Targets: the float block on the float model's own activations (so a block can also
            # make up for error accumulated before it), or on the quantized pipeline's inputs.
            targets = _run_block(float_block, hs_float if config.block_target == "float" else hs, rope)
            hs_float = targets
            del float_block
        hs_in = hs
        hs = _quantize_block(block, li, hs, rope, wanted, replace)
        if stage:
            before, after = _block_stage(block, hs_in, targets, rope, config.block_steps, config.block_lr,
                                         config.seed + li)
            if log:
                log(f"layer {li}: block stage mse {before:.3e} -> {after:.3e}")
            hs = _run_block(block, hs_in, rope)
    if "output" in wanted:
        hook = _HessianHook(model.output.in_features)
        for h in hs:
            hook(None, (model.norm(h),))
        replace("output", hook.H)
    set_act_bits(model, config.act_bits)  # calibration above ran with float activations
    return model


def model_quant_summary(model: nn.Module) -> dict:
    """Counts and bytes of packed vs float weights (for logs and --json)."""
    packed_bytes = float_bytes = n_packed = 0
    for m in model.modules():
        if isinstance(m, (_PackedLinear, PackedEmbedding)):
            n_packed += 1
            packed_bytes += sum(b.numel() * b.element_size() for b in (m.qweight, m.scale, m.zero))
    seen = set()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            float_bytes += p.numel() * p.element_size()
    return {"packed_modules": n_packed, "packed_bytes": packed_bytes, "float_bytes": float_bytes}


@torch.no_grad()
def quantize_linears_(model: nn.Module, stages: list[list[str]], config: QuantConfig,
                      calib: list | None = None, run: Callable[[object], None] | None = None, *,
                      advance: Callable[[int], None] | None = None) -> nn.Module:
    """Quantize named ``nn.Linear`` modules of *any* model in place (e.g. a BERT encoder).

    ``stages`` lists module names in computation order, grouped so that each group's inputs
    depend only on earlier groups; ``run(batch)`` runs the model on one item of ``calib``.
    For each stage every calibration batch runs (stopping after the stage's last module) with
    Hessian hooks on the stage's modules, which are then solved with ``config.method`` and
    replaced by ``PackedLinearW{bits}``, so later stages see the quantized earlier ones. Without
    ``calib`` every module is rounded to nearest.

    Example::

        stages = [[f"encoder.layer.{i}.attention.self.{p}" for p in ("query", "key", "value")], ...]
        quantize_linears_(bert, stages, preset_config("w4g32", method="gptq"), batches, lambda b: bert(**b))

    Raises UserError if the method needs calibration and none is given.
    """
    if config.needs_calibration and (calib is None or run is None):
        raise UserError(f"method {config.method!r} needs calibration data", "pass calib and run")
    kw = dict(damp=config.damp, act_order=config.act_order, block_size=config.block_size,
              rounds=config.rounds, grid=config.grid)

    def stop(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        raise _Stop

    for stage in stages:
        hooks = {n: _HessianHook(_get(model, n).in_features) for n in stage}
        if calib is not None and run is not None:
            handles = [_get(model, n).register_forward_pre_hook(hooks[n]) for n in stage]
            handles.append(_get(model, stage[-1]).register_forward_hook(stop))
            try:
                for batch in calib:
                    try:
                        run(batch)
                    except _Stop:
                        pass
            finally:
                for h in handles:
                    h.remove()
        for n in stage:
            lin = _get(model, n)
            H = hooks[n].H if hooks[n].n else None
            method = config.method if H is not None else "rtn"
            _set(model, n, PACKED_LINEAR[config.bits].from_float(lin, config.group_size, H, method, **kw))
            if advance:
                advance(1)
    set_act_bits(model, config.act_bits)
    return model
