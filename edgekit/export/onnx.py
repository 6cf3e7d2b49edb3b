"""ONNX export with the KV cache as explicit inputs and outputs (onnxruntime-genai naming).

The ONNX contract (batch fixed at 1; all float tensors float32):

- inputs: ``input_ids`` int64 [1, T]; ``position_ids`` int64 [1, T] (= past_len + arange(T));
  ``past_key_values.{i}.key`` / ``past_key_values.{i}.value`` [1, n_kv, past_len, head_dim] for
  each layer i. ``T`` >= 1 and ``past_len`` >= 0 are dynamic (past_len + T <= max_seq_len, the
  RoPE table size). Positions are used instead of an attention_mask: token ``j`` of the new
  chunk sees keys ``0 .. position_ids[j]``, i.e. the past plus the causal part of the chunk.
- outputs: ``logits`` float32 [1, T, V]; ``present.{i}.key`` / ``present.{i}.value``
  [1, n_kv, past_len + T, head_dim] (past and new rows concatenated).
- Rolling back = feeding ``present[..., :pos, :]`` as the next past.
- weights in ``model.onnx.data`` (external data) next to ``model.onnx``.

The wrapper reuses the reference model's modules: each layer's static cache is swapped, for the
duration of the export only, for a module that concatenates past and new K/V.

Example::

    info = export_onnx(lm.model, Path("pkg"))   # writes pkg/model.onnx + pkg/model.onnx.data
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from edgekit.errors import InternalError
from edgekit.export.package import ONNX_DATA, ONNX_FILE

OPSET = 18


def input_names(n_layers: int) -> list[str]:
    names = ["input_ids", "position_ids"]
    for i in range(n_layers):
        names += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
    return names


def output_names(n_layers: int) -> list[str]:
    names = ["logits"]
    for i in range(n_layers):
        names += [f"present.{i}.key", f"present.{i}.value"]
    return names


class ConcatKV(torch.nn.Module):
    """Stands in for StaticKVCache: returns cat(past, new) along the sequence axis."""

    def __init__(self) -> None:
        super().__init__()
        self.past: tuple[torch.Tensor, torch.Tensor] | None = None
        self.present: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pk, pv = self.past
        self.present = (torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2))  # (1, KV, P+T, hd)
        return self.present


class ConcatCacheLM(torch.nn.Module):
    """forward(input_ids, position_ids, *past) -> (logits, *present), see the module docstring."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.caches = [ConcatKV() for _ in model.layers]

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor):
        input_pos = position_ids[0]  # (T,)
        T = input_ids.shape[1]
        P = past[0].shape[2]
        keys = torch.arange(P + T, device=input_ids.device)
        attn_mask = keys.unsqueeze(0) <= input_pos.unsqueeze(1)  # (T, P+T) bool
        for i, c in enumerate(self.caches):
            c.past = (past[2 * i], past[2 * i + 1])
        logits = self.model(input_ids, input_pos, attn_mask=attn_mask)
        out = [logits]
        for c in self.caches:
            out += list(c.present)
        return tuple(out)

    @contextmanager
    def swapped(self) -> Iterator["ConcatCacheLM"]:
        """Temporarily put the concat caches into the model's attention layers."""
        old = [layer.attention.kv_cache for layer in self.model.layers]
        try:
            for layer, c in zip(self.model.layers, self.caches):
                layer.attention.kv_cache = c
            yield self
        finally:
            for layer, c in zip(self.model.layers, old):
                layer.attention.kv_cache = c


def export_onnx(model: torch.nn.Module, out_dir: str | Path,
                log: Callable[[str], None] | None = None,
                stage: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Write ``out_dir/model.onnx`` and ``out_dir/model.onnx.data`` and check them.

    Returns ``{file, data, opset, inputs, outputs, n_nodes, ...}`` for the manifest. Raises
    ``InternalError`` when the exporter or the checker fails.
    """
    import onnx
    from contextlib import nullcontext

    from edgekit.export.quant_lower import lowered_for_onnx
    from torch.export import Dim

    stage = stage or (lambda name: nullcontext())
    out_dir = Path(out_dir)
    args = model.args
    L, kv, hd = args.n_layers, args.n_kv_heads, args.head_dim
    wrapper = ConcatCacheLM(model).eval()
    P_ex, T_ex = 3, 2
    example = (torch.zeros(1, T_ex, dtype=torch.long), torch.arange(P_ex, P_ex + T_ex).unsqueeze(0),
               *[torch.zeros(1, kv, P_ex, hd) for _ in range(2 * L)])
    T = Dim("T", min=1, max=args.max_seq_len)
    P = Dim("past_len", min=0, max=args.max_seq_len - 1)
    dyn = ({1: T}, {1: T}, tuple({2: P} for _ in range(2 * L)))  # *past is one varargs tuple
    path = out_dir / ONNX_FILE
    try:
        # Packed quantized linears export as com.microsoft::MatMulNBits (edgekit/export/quant_lower.py).
        with stage("export[onnx]"), wrapper.swapped(), lowered_for_onnx(model) as table, torch.no_grad():
            prog = torch.onnx.export(wrapper, example, dynamo=True, dynamic_shapes=dyn,
                                     input_names=input_names(L), output_names=output_names(L),
                                     opset_version=OPSET, optimize=True, verbose=False,
                                     custom_translation_table=table)
        with stage("serialize[onnx]"):
            prog.save(str(path), external_data=True)
            # The exporter names the data file after the model; keep the documented name.
            if not (out_dir / ONNX_DATA).exists():
                raise InternalError(f"ONNX exporter did not write {ONNX_DATA}", "report it")
        with stage("check[onnx]"):
            onnx.checker.check_model(str(path), full_check=False)
            proto = onnx.load(str(path), load_external_data=False)
    except InternalError:
        raise
    except Exception as e:  # the dynamo exporter raises many kinds
        raise InternalError(f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                            "rerun with EDGEKIT_DEBUG=1 and report it") from e
    n_nodes = len(proto.graph.node)
    n_mnb = sum(1 for n in proto.graph.node if n.op_type == "MatMulNBits")
    if log:
        log(f"  onnx: {n_nodes} nodes, opset {OPSET}")
    return {"file": ONNX_FILE, "data": ONNX_DATA, "opset": OPSET, "n_nodes": n_nodes,
            "size": path.stat().st_size + (out_dir / ONNX_DATA).stat().st_size,
            "inputs": {"input_ids": "int64 [1, T]", "position_ids": "int64 [1, T]",
                       "past_key_values.{i}.key|value": f"float32 [1, {kv}, past_len, {hd}]"},
            "outputs": {"logits": "float32 [1, T, V]",
                        "present.{i}.key|value": f"float32 [1, {kv}, past_len + T, {hd}]"},
            "input_names": input_names(L), "output_names": output_names(L),
            "batch": 1, "cache_inputs": "position_ids",
            "custom_ops": ["com.microsoft::MatMulNBits"] if n_mnb else [], "matmul_nbits": n_mnb}
