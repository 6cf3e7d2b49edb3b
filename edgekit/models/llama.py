"""Llama-family decoder written for export: static KV cache buffers, T >= 1 tokens per call.

One forward processes ``T`` new tokens written to cache slots ``input_pos`` and returns logits
for all of them, which serves prefill in chunks, one-token decode and speculative verification
(a chain is ``input_pos = start + arange(T)``; a tree passes its own ``attn_mask`` and
``rope_pos``). Rolling back after rejected candidates is just a smaller next ``input_pos``: the
stale rows are masked out and later overwritten.

Example::

    m = Transformer(ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128,
                              vocab_size=256, max_seq_len=64))
    logits = m(torch.tensor([[1, 5, 9]]), torch.arange(3))  # (1, 3, 256)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.models.config import ModelArgs


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis; also the reference of ``edgekit::rms_norm``."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return xf.type_as(x) * weight


def rope_heads(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split RoPE with full-width (T, hd) tables on ``x`` (B, T, H, hd), returned heads-first
    (B, H, T, hd): ``x cos + cat(-x[hd/2:], x[:hd/2]) sin``, the products and sums of the export
    path's ``x cos + linear(x, W) sin``. The reference of ``edgekit::rope``."""
    xt = x.transpose(1, 2)
    half = xt.shape[-1] // 2
    return xt * cos + torch.cat((-xt[..., half:], xt[..., :half]), -1) * sin


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up; the reference of ``edgekit::swiglu``."""
    return F.silu(gate) * up


def _edgekit_ops():
    import edgekit.kernels.ops  # noqa: F401  (registers torch.ops.edgekit)

    return torch.ops.edgekit


class RMSNorm(nn.Module):
    # True: one edgekit::rms_norm call (set with Attention.cache_sdpa, see there)
    edgekit_ops = False

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.edgekit_ops:
            return _edgekit_ops().rms_norm(x, self.weight, self.eps)
        return rms_norm(x, self.weight, self.eps)


def rope_frequencies(args: ModelArgs) -> torch.Tensor:
    """Inverse frequencies (head_dim/2,), with HF's "llama3" long-context scaling when asked."""
    hd = args.head_dim
    inv = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    sc = args.rope_scaling
    if sc and sc.get("rope_type", sc.get("type")) == "llama3":
        factor = sc["factor"]
        low, high = sc.get("low_freq_factor", 1.0), sc.get("high_freq_factor", 4.0)
        old = sc.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old / low, inv / factor, inv)
        mid = (wavelen <= old / low) & (wavelen >= old / high)
        inv = torch.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    elif sc and sc.get("rope_type", sc.get("type")) not in (None, "default"):
        raise ValueError(f"unsupported rope_scaling {sc}")
    return inv


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate ``x`` (B, H, T, hd) by per-position angles; cos/sin are (T, hd/2)."""
    B, H, _, hd = x.shape
    if interleaved:
        # Meta / llama2.c layout: pairs (x0, x1), (x2, x3), ...
        # (-1 for T, never a symbolic size: XNNPACK lowers reshapes with one inferred dim only)
        xr = x.reshape(B, H, -1, hd // 2, 2)
        a, b = xr[..., 0], xr[..., 1]
        out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
        return out.reshape(B, H, -1, hd)
    # HF layout: first half rotated against second half.
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


class StaticKVCache(nn.Module):
    """Preallocated K/V buffers (B, n_kv, S, hd) that live inside an exported program."""

    def __init__(self, batch: int, n_kv: int, max_seq_len: int, head_dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        shape = (batch, n_kv, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype), persistent=False)

    def resize(self, n: int) -> None:
        """Reallocate to ``n`` slots, keeping the first min(old, n) rows (eager only)."""
        B, H, S, D = self.k_cache.shape
        keep = min(S, n)
        for name in ("k_cache", "v_cache"):
            old = getattr(self, name)
            new = old.new_zeros((B, H, n, D))
            new[:, :, :keep] = old[:, :, :keep]
            setattr(self, name, new)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, n_kv, T, hd) at slots ``input_pos`` (T,); return the whole cache."""
        self.k_cache.index_copy_(2, input_pos, k)
        self.v_cache.index_copy_(2, input_pos, v)
        return self.k_cache, self.v_cache


def cached_attention(q: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """Attention of q (B, H, T, hd) over a whole static cache (B, KV, S, hd) with an additive
    mask (T, S); returns (B, T, H * hd). Query head h reads KV head h // (H // KV). Written as
    two 3-D bmm's (a 4-D matmul exports as expand_copy + bmm, i.e. a copy of the whole cache per
    layer); the reference of the edgekit::sdpa_cache op (edgekit/kernels/ops.py)."""
    B, H, _, hd = q.shape
    KV, S = k_all.shape[1], k_all.shape[2]
    # Group query heads by their KV head instead of copying the cache H // KV times.
    qg = q.reshape(B * KV, -1, hd)  # (B*KV, rep*T, hd)
    scores = torch.bmm(qg, k_all.reshape(B * KV, S, hd).transpose(1, 2)) * (1.0 / math.sqrt(hd))
    scores = scores.view(B, KV, H // KV, -1, S) + mask  # mask (T, S) additive
    probs = torch.softmax(scores.float(), dim=-1).type_as(q).view(B * KV, -1, S)
    out = torch.bmm(probs, v_all.reshape(B * KV, S, hd))  # (B*KV, rep*T, hd)
    return out.view(B, H, -1, hd).transpose(1, 2).reshape(B, -1, H * hd)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, max_batch: int) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.hd = args.n_heads, args.n_kv_heads, args.head_dim
        self.interleaved = args.rope_interleaved
        self.wq = nn.Linear(args.dim, self.n_heads * self.hd, bias=args.qkv_bias)
        self.wk = nn.Linear(args.dim, self.n_kv * self.hd, bias=args.qkv_bias)
        self.wv = nn.Linear(args.dim, self.n_kv * self.hd, bias=args.qkv_bias)
        self.wo = nn.Linear(self.n_heads * self.hd, args.dim, bias=False)
        self.kv_cache = StaticKVCache(max_batch, self.n_kv, args.max_seq_len, self.hd, torch.float32)
        # True: attention is one edgekit::sdpa_cache call (set for ExecuTorch export when the
        # program carries edgekit's kernels; the op reads only visible cache slots)
        self.cache_sdpa = False
        # True with cache_sdpa (lowered_for_executorch): RoPE is edgekit::rope on the export
        # path's full-width tables, as are the norms (RMSNorm) and SwiGLU (FeedForward), and the
        # cache writes join the attention call (edgekit::sdpa_kv); when wq is a fused export group
        # with a ``stacked(x)`` method (wq|wk|wv rows in one call), RoPE, cache writes and
        # attention are one edgekit::qkv_attn call on it
        self.edgekit_ops = False

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                input_pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Views use -1 for T and static sizes elsewhere (XNNPACK lowers reshapes with a single
        # inferred dim but no symbolic sizes), and attention is two 3-D bmm's (a 4-D matmul
        # exports as expand_copy + bmm, i.e. a copy of the whole cache per layer).
        B = x.shape[0]
        H, KV, hd = self.n_heads, self.n_kv, self.hd
        stacked = getattr(self.wq, "stacked", None)  # wq|wk|wv rows in one call (an export fused group)
        if self.edgekit_ops and self.cache_sdpa and stacked is not None and cos.shape[-1] == hd:
            c = self.kv_cache  # RoPE, cache writes and attention in one call on the fused projection
            return self.wo(_edgekit_ops().qkv_attn(stacked(x), cos, sin, c.k_cache, c.v_cache, input_pos, mask, H))
        # wq, wk, wv in this order (a fused export group runs on its first member's call)
        q, k = self.wq(x).view(B, -1, H, hd), self.wk(x).view(B, -1, KV, hd)  # (B, T, heads, hd)
        v = self.wv(x).view(B, -1, KV, hd)  # (B, T, KV, hd)
        if self.edgekit_ops and cos.shape[-1] == hd:  # one call each, the transpose included
            ops = _edgekit_ops()
            q, k = ops.rope(q, cos, sin), ops.rope(k, cos, sin)  # (B, H, T, hd), (B, KV, T, hd)
            if self.cache_sdpa:  # cache writes and attention in one call, v as the projection left it
                c = self.kv_cache
                return self.wo(ops.sdpa_kv(q, k, v, c.k_cache, c.v_cache, input_pos, mask))
            return self._attend(q, k, v.transpose(1, 2), input_pos, mask)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
        if cos.shape[-1] == hd:  # full-width tables (export): rotate-half as a matmul, no slices
            rot = self.rope_rot  # (hd, hd) as a linear's weight: F.linear(x, rot) = cat(-x[half:], x[:half])
            q = q * cos + F.linear(q, rot) * sin
            k = k * cos + F.linear(k, rot) * sin
        else:
            q = apply_rope(q, cos, sin, self.interleaved)
            k = apply_rope(k, cos, sin, self.interleaved)
        return self._attend(q, k, v, input_pos, mask)

    def _attend(self, q, k, v, input_pos, mask) -> torch.Tensor:
        k_all, v_all = self.kv_cache.update(input_pos, k, v)  # (B, KV, S, hd)
        if self.cache_sdpa:
            return self.wo(_edgekit_ops().sdpa_cache(q, k_all, v_all, mask))  # (B, T, H*hd) -> dim
        return self.wo(cached_attention(q, k_all, v_all, mask))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    # True: one edgekit::swiglu call, or swiglu_gu on a fused w1|w3 group (see Attention.edgekit_ops)
    edgekit_ops = False

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.edgekit_ops:
            stacked = getattr(self.w1, "stacked", None)  # w1|w3 rows in one call (an export fused group)
            if stacked is not None:
                return self.w2(_edgekit_ops().swiglu_gu(stacked(x)))
            return self.w2(_edgekit_ops().swiglu(self.w1(x), self.w3(x)))
        return self.w2(swiglu(self.w1(x), self.w3(x)))


class Block(nn.Module):
    def __init__(self, args: ModelArgs, max_batch: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args, max_batch)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        if args.ffn_type != "swiglu":
            raise ValueError(f"unknown ffn_type {args.ffn_type!r}")
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)

    def forward(self, x, cos, sin, input_pos, mask):
        h = x + self.attention(self.attention_norm(x), cos, sin, input_pos, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """The reference decoder. Parameter names follow llama2.c/Meta (tok_embeddings, layers.N...)."""

    def __init__(self, args: ModelArgs, max_batch: int = 1) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args, max_batch) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        angles = torch.outer(torch.arange(args.max_seq_len, dtype=torch.float64), rope_frequencies(args))
        self.register_buffer("rope_cos", angles.cos().float(), persistent=False)  # (S, hd/2)
        self.register_buffer("rope_sin", angles.sin().float(), persistent=False)
        self.register_buffer("slots", torch.arange(args.max_seq_len), persistent=False)

    @property
    def cache_len(self) -> int:
        """Slots in the KV cache (max_seq_len unless resized for a memory budget)."""
        return self.slots.shape[0]

    def resize_cache(self, n: int) -> None:
        """Grow or shrink every layer's KV cache to ``n`` slots, keeping existing rows.

        Used by the eager engine's memory manager to size the cache to what a conversation
        needs instead of the model's full context. Exported programs keep their export size.
        """
        if not 0 < n <= self.args.max_seq_len:
            raise ValueError(f"cache length {n} outside [1, {self.args.max_seq_len}]")
        for layer in self.layers:
            layer.attention.kv_cache.resize(n)
        self.slots = torch.arange(n)

    def causal_mask(self, input_pos: torch.Tensor) -> torch.Tensor:
        """Additive (T, S) mask: token i sees cache slots <= input_pos[i]."""
        allowed = self.slots.unsqueeze(0) <= input_pos.unsqueeze(1)
        return torch.where(allowed, 0.0, float("-inf"))

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor,
                attn_mask: torch.Tensor | None = None, rope_pos: torch.Tensor | None = None,
                n_layers: int | None = None, return_hidden: bool = False) -> torch.Tensor:
        """Logits (B, T, V) for ``tokens`` (B, T) written at cache slots ``input_pos`` (T,).

        ``attn_mask``: optional boolean (T, S) visibility (tree verification), S = cache_len;
        default causal by slot. ``rope_pos``: positions for RoPE when they differ from slots (tree depth).
        ``n_layers``: run only the first layers then the final norm and head (early-exit draft).
        ``return_hidden``: return the final-normed hidden states (B, T, dim) instead of logits, so
        a caller can apply the head to only the rows it needs (speculative tree verification).
        """
        if attn_mask is None:
            mask = self.causal_mask(input_pos)
        else:
            mask = torch.where(attn_mask, 0.0, float("-inf"))
        pos = input_pos if rope_pos is None else rope_pos
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]
        h = self.tok_embeddings(tokens)
        layers = self.layers if n_layers is None else self.layers[:n_layers]
        for layer in layers:
            h = layer(h, cos, sin, input_pos, mask)
        h = self.norm(h)
        return h if return_hidden else self.output(h).float()
