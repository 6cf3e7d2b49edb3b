"""Tree verification inside an ExecuTorch program: ``verify_tree`` and ``compact`` next to
``forward``, all three reading and writing ONE set of KV cache buffers.

Methods (on top of the ABI-1 ``forward`` and constant methods):

- ``verify_tree(tokens int64 [1, T], input_pos int64 [T], attn_mask bool [T, S],
  rope_pos int64 [T]) -> logits float32 [1, T, V]``: the tree's nodes written at cache slots
  ``input_pos``; node i attends to the slots ``attn_mask[i]`` allows (the prefix and its
  ancestors), with RoPE at ``rope_pos[i]`` (start + depth). ``S = max_seq_len``.
- ``compact(src int64 [N], dst int64 [N]) -> int64 [N]``: copies cache rows ``src`` to ``dst``
  in every layer (the accepted path to contiguous slots); returns ``dst``.

The buffers are shared with ``MemoryPlanningPass(share_mutable_buffers=True)``; a runtime must
load all methods of the program into one set of memory arenas (the Python ``executorch.runtime``
does for host-only methods; the C++ ``Module`` needs ``share_memory_arenas=true``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from edgekit.errors import InternalError
from edgekit.export.executorch import _Forward

TREE_METHODS = ("verify_tree", "compact")



class _VerifyTree(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens, input_pos, attn_mask, rope_pos) -> torch.Tensor:
        return self.model(tokens, input_pos, attn_mask=attn_mask, rope_pos=rope_pos)  # (1, T, V)


class _Compact(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        for layer in self.model.layers:
            c = layer.attention.kv_cache
            k = c.k_cache.index_select(2, src)  # (1, n_kv, N, hd)
            v = c.v_cache.index_select(2, src)
            c.k_cache.index_copy_(2, dst, k)
            c.v_cache.index_copy_(2, dst, v)
        return dst + 0


def export_executorch_tree(model: torch.nn.Module, path: str | Path, max_chunk: int,
                           log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write a .pte with ``forward``, ``verify_tree``, ``compact`` and the constant methods."""
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass
    from torch.export import Dim, export

    from edgekit.export.executorch import _reset_cache, constant_methods, partitioners
    from edgekit.export.quant_lower import lowered_for_executorch
    from edgekit.export.transforms import export_friendly

    path = Path(path)
    args = model.args
    S = args.max_seq_len
    T = Dim("T", min=1, max=max_chunk)
    N = Dim("N", min=1, max=max_chunk)
    t2 = min(2, max_chunk)
    try:
        with export_friendly(model), lowered_for_executorch(model) as qlow, torch.no_grad():
            _reset_cache(model)
            kw = dict(strict=False, prefer_deferred_runtime_asserts_over_guards=True)
            ep_f = export(_Forward(model), (torch.zeros(1, t2, dtype=torch.long), torch.arange(t2)),
                          dynamic_shapes=({1: T}, {0: T}), **kw)
            mask = torch.ones(t2, S, dtype=torch.bool)
            ep_v = export(_VerifyTree(model), (torch.zeros(1, t2, dtype=torch.long), torch.arange(t2), mask,
                                               torch.arange(t2)),
                          dynamic_shapes=({1: T}, {0: T}, {0: T}, {0: T}), **kw)
            ep_c = export(_Compact(model), (torch.arange(t2), torch.arange(t2)),
                          dynamic_shapes=({0: N}, {0: N}), **kw)
            edge = to_edge_transform_and_lower(
                {"forward": ep_f, "verify_tree": ep_v, "compact": ep_c},
                partitioner=partitioners(qlow.get("elementwise", False)),
                compile_config=EdgeCompileConfig(_check_ir_validity=False),
                constant_methods=constant_methods(args, max_chunk))
            from edgekit.export.executorch import delegation_stats, program_op_calls

            stats = delegation_stats(edge)  # of forward
            et = edge.to_executorch(ExecutorchBackendConfig(
                passes=[InitializedMutableBufferPass(["k_cache", "v_cache"])], run_reinplace_pass=True,
                memory_planning_pass=MemoryPlanningPass(share_mutable_buffers=True)))
            path.write_bytes(et.buffer)
            calls = program_op_calls(et)  # of forward (verify_tree runs the same ops)
    except (RuntimeError, ValueError, TypeError, AssertionError) as e:
        raise InternalError(f"ExecuTorch tree export failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                            "rerun with EDGEKIT_DEBUG=1 and report it") from e
    finally:
        _reset_cache(model)
    if log:
        log(f"  executorch: forward + {', '.join(TREE_METHODS)} sharing the KV buffers")
    from edgekit.export.package import EDGEKIT_ABI

    return {"file": path.name, "size": path.stat().st_size, "abi": EDGEKIT_ABI, "delegate": "xnnpack",
            "methods": ["forward", *TREE_METHODS, *constant_methods(args, max_chunk)],
            "inputs": {"tokens": "int64 [1, T]", "input_pos": "int64 [T]"},
            "outputs": {"logits": "float32 [1, T, V]"}, "dynamic_T": [1, max_chunk],
            "tree_methods": {"verify_tree": "(tokens int64 [1, T], input_pos int64 [T], attn_mask bool [T, S], "
                                             "rope_pos int64 [T]) -> logits float32 [1, T, V]",
                             "compact": "(src int64 [N], dst int64 [N]) -> dst", "shared_kv": True},
            "custom_ops": sorted(calls), **stats}
