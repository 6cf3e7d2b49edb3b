"""Model hyper-parameters shared by the model code, the loaders, the exporter and the planner."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelArgs:
    """Hyper-parameters of a Llama-family decoder.

    ``arch`` names the family the checkpoint came from (``llama2c``, ``llama``, ``qwen2``,
    ``smollm``); the model code only looks at the numeric fields and flags. ``ffn_type`` is the
    extension point for BlockFFN (``"swiglu"`` is the only dense kind today).
    """

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    vocab_size: int
    max_seq_len: int = 2048
    head_dim: int | None = None  # None -> dim // n_heads
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_interleaved: bool = False  # True: rotate adjacent pairs (Meta/llama2.c); False: halves (HF)
    rope_scaling: dict[str, Any] | None = None  # HF "llama3" scaling dict, or None
    tie_embeddings: bool = False
    qkv_bias: bool = False
    ffn_type: str = "swiglu"
    arch: str = "llama"
    bos_id: int | None = 1
    eos_ids: list[int] = field(default_factory=lambda: [2])

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} not divisible by n_kv_heads {self.n_kv_heads}")

    @property
    def kv_dim(self) -> int:
        """Width of one K (or V) row across all KV heads."""
        return self.n_kv_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelArgs":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def n_params(self) -> dict[str, int]:
        """Parameter counts by role: embedding, lm_head (0 when tied), per-layer linears, norms."""
        hd = self.head_dim
        attn = self.dim * (self.n_heads * hd) * 2 + self.dim * self.kv_dim * 2
        bias = (self.n_heads * hd + 2 * self.kv_dim) if self.qkv_bias else 0
        ffn = 3 * self.dim * self.hidden_dim
        return {
            "embedding": self.vocab_size * self.dim,
            "lm_head": 0 if self.tie_embeddings else self.vocab_size * self.dim,
            "linear": self.n_layers * (attn + ffn),
            "bias": self.n_layers * bias,
            "norm": self.n_layers * 2 * self.dim + self.dim,
        }


# Real model shapes used for speed and memory measurements (random weights cost the same).
SHAPES: dict[str, ModelArgs] = {
    "smollm2-135m": ModelArgs(
        dim=576, n_layers=30, n_heads=9, n_kv_heads=3, hidden_dim=1536, vocab_size=49152,
        max_seq_len=2048, rope_theta=100000.0, tie_embeddings=True, arch="smollm",
        bos_id=1, eos_ids=[2],
    ),
    "qwen2.5-0.5b": ModelArgs(
        dim=896, n_layers=24, n_heads=14, n_kv_heads=2, hidden_dim=4864, vocab_size=151936,
        max_seq_len=4096, norm_eps=1e-6, rope_theta=1000000.0, tie_embeddings=True,
        qkv_bias=True, arch="qwen2", bos_id=None, eos_ids=[151643],
    ),
    "llama-3.2-1b": ModelArgs(
        dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, hidden_dim=8192, vocab_size=128256,
        max_seq_len=8192, rope_theta=500000.0, tie_embeddings=True, arch="llama",
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_id=128000, eos_ids=[128001],
    ),
    "llama-2-7b": ModelArgs(
        dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, hidden_dim=11008, vocab_size=32000,
        max_seq_len=4096, arch="llama",
    ),
}
