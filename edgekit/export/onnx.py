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

Tree verification (``export_onnx(..., tree=True)``, ``edgekit export --tree-verify``) adds one
input and changes nothing else:

- ``attention_mask`` bool [T, past_len + T]: row ``i`` marks the keys token ``i`` attends to, so
  it replaces the positions' causal rule. A token tree written after the prefix sets the prefix
  columns and the node's ancestors and itself (``edgekit.runtime.spec.tree_visibility``). (Not
  onnxruntime-genai's int64 [1, total_len] padding mask of the same name.)
- ``position_ids`` are then the RoPE positions only: ``start + depth`` for a tree node. The new
  K/V rows are appended in input order whatever the positions, so ``present`` row
  ``past_len + i`` is node ``i``.
- Compacting the accepted path is the runtime's: the next past is ``present`` rows
  ``[0, start)`` followed by ``start + path`` (``OnnxBackend.compact``).
- Plain decoding feeds the causal mask ``keys <= past_len + i``. The manifest entry records
  the input under ``inputs`` and ``tree_inputs``.

The wrapper reuses the reference model's modules: each layer's static cache is swapped, for the
duration of the export only, for a module that concatenates past and new K/V.

Example::

    info = export_onnx(lm.model, Path("pkg"))   # writes pkg/model.onnx + pkg/model.onnx.data
    info = export_onnx(lm.model, Path("pkg_tree"), tree=True)   # + the attention_mask input
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from edgekit.errors import InternalError
from edgekit.export.package import ONNX_DATA, ONNX_FILE

OPSET = 18
# Manifest ``programs.onnx.tree_inputs`` of a tree-verify export (the executorch program's
# ``tree_methods`` counterpart).
TREE_INPUTS = {
    "attention_mask": "bool [T, past_len + T]: row i = the keys token i attends to (a tree node: the "
                      "prefix and its ancestors; plain decoding: keys 0 .. past_len + i)",
    "position_ids": "int64 [1, T]: RoPE positions (a tree node: start + depth)",
    "compact": "runtime side: keep present rows [0, start) and start + path, in path order",
}


def input_names(n_layers: int, tree: bool = False) -> list[str]:
    names = ["input_ids", "position_ids", *(["attention_mask"] if tree else [])]
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
        return self._run(input_ids, input_pos, attn_mask, past)

    def _run(self, input_ids: torch.Tensor, input_pos: torch.Tensor, attn_mask: torch.Tensor,
             past: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        for i, c in enumerate(self.caches):
            c.past = (past[2 * i], past[2 * i + 1])
        # RoPE at input_pos; the cache ignores it (new rows are appended at past_len.. in order).
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


class MaskedConcatCacheLM(ConcatCacheLM):
    """forward(input_ids, position_ids, attention_mask, *past) -> (logits, *present): the
    tree-verify contract (module docstring); RoPE at ``position_ids``, visibility from the mask."""

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                *past: torch.Tensor):
        return self._run(input_ids, position_ids[0], attention_mask, past)


def _name_mask_keys(model) -> None:
    """Name the mask's key axis ``past_len + T`` (as ``present.*`` have it) in the exported
    onnx_ir model; the exporter gives an inferred dimension a generated name (``s53``)."""
    import onnx_ir as ir

    mask = next(v for v in model.graph.inputs if v.name == "attention_mask")
    old = mask.shape[1]
    if not isinstance(old, ir.SymbolicDim) or old.value is None or old.value == "past_len + T":
        return
    values = [*model.graph.inputs, *(o for n in ir.traversal.RecursiveGraphIterator(model.graph)
                                     for o in n.outputs)]
    for v in values:
        if v.shape is not None and any(isinstance(d, ir.SymbolicDim) and d.value == old.value for d in v.shape):
            v.shape = ir.Shape([ir.SymbolicDim("past_len + T") if isinstance(d, ir.SymbolicDim)
                                and d.value == old.value else d for d in v.shape])


def export_onnx(model: torch.nn.Module, out_dir: str | Path,
                log: Callable[[str], None] | None = None,
                stage: Callable[[str], Any] | None = None, tree: bool = False) -> dict[str, Any]:
    """Write ``out_dir/model.onnx`` and ``out_dir/model.onnx.data`` and check them.

    ``tree``: add the ``attention_mask`` input (tree verification, see the module docstring);
    without it the graph is the plain contract, unchanged.

    Returns ``{file, data, opset, inputs, outputs, n_nodes, ...}`` for the manifest (with
    ``tree_inputs`` when ``tree``). Raises ``InternalError`` when the exporter or the checker fails.
    """
    import onnx
    from contextlib import nullcontext

    from edgekit.export.quant_lower import lowered_for_onnx
    from torch.export import Dim

    stage = stage or (lambda name: nullcontext())
    out_dir = Path(out_dir)
    args = model.args
    L, kv, hd = args.n_layers, args.n_kv_heads, args.head_dim
    wrapper = (MaskedConcatCacheLM if tree else ConcatCacheLM)(model).eval()
    P_ex, T_ex = 3, 2
    ids_pos = (torch.zeros(1, T_ex, dtype=torch.long), torch.arange(P_ex, P_ex + T_ex).unsqueeze(0))
    past = [torch.zeros(1, kv, P_ex, hd) for _ in range(2 * L)]
    T = Dim("T", min=1, max=args.max_seq_len)
    P = Dim("past_len", min=0, max=args.max_seq_len - 1)
    past_dyn = tuple({2: P} for _ in range(2 * L))  # *past is one varargs tuple
    if tree:
        mask = torch.ones(T_ex, P_ex + T_ex, dtype=torch.bool)  # (T, P+T)
        example = (*ids_pos, mask, *past)
        # the mask's key axis is past_len + T; the exporter infers that relation (Dim.AUTO)
        dyn = ({1: T}, {1: T}, {0: T, 1: Dim.AUTO}, past_dyn)
    else:
        example = (*ids_pos, *past)
        dyn = ({1: T}, {1: T}, past_dyn)
    path = out_dir / ONNX_FILE
    try:
        # Packed quantized linears export as com.microsoft::MatMulNBits (edgekit/export/quant_lower.py).
        with stage("export[onnx]"), wrapper.swapped(), lowered_for_onnx(model) as table, torch.no_grad():
            prog = torch.onnx.export(wrapper, example, dynamo=True, dynamic_shapes=dyn,
                                     input_names=input_names(L, tree), output_names=output_names(L),
                                     opset_version=OPSET, optimize=True, verbose=False,
                                     custom_translation_table=table)
        with stage("serialize[onnx]"):
            if tree:
                _name_mask_keys(prog.model)
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
    info = {"file": ONNX_FILE, "data": ONNX_DATA, "opset": OPSET, "n_nodes": n_nodes,
            "size": path.stat().st_size + (out_dir / ONNX_DATA).stat().st_size,
            "inputs": {"input_ids": "int64 [1, T]", "position_ids": "int64 [1, T]",
                       "past_key_values.{i}.key|value": f"float32 [1, {kv}, past_len, {hd}]"},
            "outputs": {"logits": "float32 [1, T, V]",
                        "present.{i}.key|value": f"float32 [1, {kv}, past_len + T, {hd}]"},
            "input_names": input_names(L, tree), "output_names": output_names(L),
            "batch": 1, "cache_inputs": "position_ids",
            "custom_ops": ["com.microsoft::MatMulNBits"] if n_mnb else [], "matmul_nbits": n_mnb}
    if tree:
        info["inputs"]["attention_mask"] = "bool [T, past_len + T]"
        info["cache_inputs"] = "position_ids, attention_mask"
        info["tree_inputs"] = dict(TREE_INPUTS)
    if log and tree:
        log("  onnx: attention_mask input (tree verification)")
    return info
