"""ExecuTorch export of the static-KV model, lowered to XNNPACK.

The .pte contract (``get_edgekit_abi() == 1``), used by the Python backend and the native runner:

- method ``forward(tokens: int64 [1, T], input_pos: int64 [T]) -> logits: float32 [1, T, V]``
  with a dynamic ``T`` in ``[1, max_chunk]``. ``input_pos`` are the cache slots the new tokens
  are written to, normally ``start + arange(T)``; token ``i`` attends to slots ``<= input_pos[i]``.
- The KV cache lives inside the program as mutable buffers (``layers.N.attention.kv_cache.
  {k,v}_cache``, float32 [1, n_kv, max_seq_len, head_dim]), initialised to zeros in the .pte.
  Each loaded Method owns its own cache. Rolling back = calling with a smaller start: stale rows
  past the new position are masked out and later overwritten.
- constant methods (no inputs, one int64 output): ``get_max_seq_len``, ``get_max_chunk``,
  ``get_vocab_size``, ``get_n_layers``, ``get_edgekit_abi`` (1), ``get_bos_id`` (-1 if none),
  ``get_eos_id`` (first EOS id, -1 if none).

Example::

    info = export_executorch(lm.model, "model.pte", max_chunk=32, log=print)
    info["delegated_nodes"], info["total_nodes"]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from edgekit.errors import InternalError
from edgekit.export.package import EDGEKIT_ABI


class _Forward(torch.nn.Module):
    """Pins the exported signature to (tokens, input_pos): no optional mask / rope / early exit."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, input_pos)  # (1, T, V)


def constant_methods(args, max_chunk: int) -> dict[str, int]:
    return {
        "get_max_seq_len": int(args.max_seq_len),
        "get_max_chunk": int(max_chunk),
        "get_vocab_size": int(args.vocab_size),
        "get_n_layers": int(args.n_layers),
        "get_edgekit_abi": EDGEKIT_ABI,
        "get_bos_id": int(args.bos_id) if args.bos_id is not None else -1,
        "get_eos_id": int(args.eos_ids[0]) if args.eos_ids else -1,
    }


def _reset_cache(model: torch.nn.Module) -> None:
    for name, buf in model.named_buffers():
        if name.endswith(("k_cache", "v_cache")):
            buf.zero_()


def torch_export(model: torch.nn.Module, max_chunk: int) -> torch.export.ExportedProgram:
    """``torch.export`` with a dynamic T in [1, max_chunk] (the "export" stage)."""
    from torch.export import Dim, export

    t_ex = min(max(2, max_chunk // 2), max_chunk)
    example = (torch.zeros(1, t_ex, dtype=torch.long), torch.arange(t_ex))
    dyn = None
    if max_chunk > 1:
        T = Dim("T", min=1, max=max_chunk)
        dyn = ({1: T}, {0: T})
    else:
        example = (torch.zeros(1, 1, dtype=torch.long), torch.arange(1))
    _reset_cache(model)
    with torch.no_grad():
        # Deferred runtime asserts: the grouped-query reshapes create stride guards such as
        # T*min(8, 16T) == 8T that hold for every T >= 1 but that the solver cannot prove.
        ep = export(_Forward(model), example, dynamic_shapes=dyn, strict=False,
                    prefer_deferred_runtime_asserts_over_guards=True)
    return ep


def partitioners(linears_only: bool = False) -> list:
    """The XNNPACK partitioner; ``linears_only``: it takes float linears and matmuls only.

    A quantized decoder runs its layers as edgekit calls (linears, attention, norms, RoPE,
    SwiGLU: ``lowered_for_executorch``). What is left between them (residual adds, slices,
    views) is a few hundred floats per token; as XNNPACK partitions each would be a delegate call
    with ~5 us of fixed cost, as portable ops it is well under a microsecond.
    """
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    if not linears_only:
        return [XnnpackPartitioner()]
    keep = {"LinearConfig", "AddmmConfig", "MMConfig", "BMMConfig"}
    return [XnnpackPartitioner(configs=[c for c in ALL_PARTITIONER_CONFIGS if c.__name__ in keep])]


def lower(ep: torch.export.ExportedProgram, args, max_chunk: int, linears_only: bool = False):
    """``to_edge_transform_and_lower`` with the XNNPACK partitioner (the "lower" stage)."""
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    return to_edge_transform_and_lower(
        ep, partitioner=partitioners(linears_only),
        compile_config=EdgeCompileConfig(_check_ir_validity=False),
        constant_methods=constant_methods(args, max_chunk))


def delegation_stats(edge) -> dict[str, int]:
    """Ops inside XNNPACK delegates vs ops left to the portable runtime (views excluded)."""
    from executorch.exir.lowered_backend_module import get_lowered_submodules

    gm = edge.exported_program().graph_module
    skip = {"getitem", "executorch_call_delegate", "_assert_scalar", "sym_size", "eq", "mul",
            "sym_min", "ge", "le", "lt", "gt", "add", "sub", "floordiv"}
    outside: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        name = getattr(n.target, "__name__", str(n.target))
        if name.startswith("aten."):
            name = name.split(".")[1]
        if name in skip or "sym" in name:
            continue
        outside[name] = outside.get(name, 0) + 1
    inside = 0
    calls = 0
    for _, lowered, _ in get_lowered_submodules(gm):
        calls += 1
        inner = lowered.original_module.graph_module.graph
        inside += sum(1 for n in inner.nodes if n.op == "call_function"
                      and "getitem" not in str(n.target))
    n_out = sum(outside.values())
    return {"delegated_nodes": inside, "portable_nodes": n_out, "total_nodes": inside + n_out,
            "delegate_calls": calls,
            "portable_ops": dict(sorted(outside.items(), key=lambda kv: -kv[1]))}


def program_op_calls(et, method: str = "forward", prefix: str = "edgekit::") -> dict[str, int]:
    """Kernel calls per operator name (``prefix`` ones) in ``method`` of a serialized ExecuTorch
    program: what the runtime will run, read from the program itself (not from the Python model
    the export started from, so a silent fallback to another op shows up)."""
    calls: dict[str, int] = {}
    for plan in et.executorch_program.execution_plan:
        if plan.name != method:
            continue
        for chain in plan.chains:
            for ins in chain.instructions:
                if type(ins.instr_args).__name__ == "KernelCall":
                    name = plan.operators[ins.instr_args.op_index].name
                    if name.startswith(prefix):
                        calls[name] = calls.get(name, 0) + 1
    return calls


def serialize(edge, path: Path) -> tuple[int, dict[str, int]]:
    """``to_executorch`` with zero-initialised KV buffers; writes ``path``, returns its size and
    its forward's edgekit kernel calls (``program_op_calls``)."""
    from executorch.exir import ExecutorchBackendConfig
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    # Without this pass only the shape of a mutated buffer is serialized and its first content
    # is whatever the runner's planned memory holds; 0 * NaN garbage would poison attention.
    et = edge.to_executorch(ExecutorchBackendConfig(
        passes=[InitializedMutableBufferPass(["k_cache", "v_cache"])],
        run_reinplace_pass=True))  # index_put on the cache -> index_put_ (no cache copy per call))
    path.write_bytes(et.buffer)
    return path.stat().st_size, program_op_calls(et)


def export_executorch(model: torch.nn.Module, path: str | Path, max_chunk: int,
                      log: Callable[[str], None] | None = None,
                      stage: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Export, lower and serialize ``model`` to ``path`` (see the module docstring for the contract).

    ``stage(name)`` is an optional context-manager factory the builder uses to time each stage.
    Returns ``{file, size, methods, delegated_nodes, total_nodes, ...}`` for the manifest.
    Raises ``InternalError`` when the toolchain fails.
    """
    from contextlib import nullcontext

    stage = stage or (lambda name: nullcontext())
    path = Path(path)
    args = model.args
    from edgekit.export.quant_lower import lowered_for_executorch
    from edgekit.export.transforms import export_friendly

    try:
        # The exported program shares the model's weight tensors; lowering copies them into the
        # XNNPACK payloads and serializing copies the rest, so all three stages run before
        # export_friendly restores the original weight layout. Packed quantized linears become
        # edgekit::linear_w* custom-op calls (edgekit/export/quant_lower.py).
        with export_friendly(model), lowered_for_executorch(model) as qlow:
            with stage("export[executorch]"):
                ep = torch_export(model, max_chunk)
            with stage("lower[executorch]"):
                edge = lower(ep, args, max_chunk, linears_only=qlow.get("elementwise", False))
                stats = delegation_stats(edge)
            if log:
                log(f"  xnnpack: {stats['delegated_nodes']}/{stats['total_nodes']} ops delegated in "
                    f"{stats['delegate_calls']} delegate calls; portable: {stats['portable_ops']}")
            with stage("serialize[executorch]"):
                size, calls = serialize(edge, path)
            if log and calls:
                log(f"  custom ops: {calls}")
    except (RuntimeError, ValueError, TypeError, AssertionError) as e:
        raise InternalError(f"ExecuTorch export failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                            "rerun with EDGEKIT_DEBUG=1 and report it") from e
    finally:
        _reset_cache(model)
    return {"file": path.name, "size": size, "abi": EDGEKIT_ABI, "delegate": "xnnpack",
            "methods": ["forward", *constant_methods(args, max_chunk)],
            "inputs": {"tokens": "int64 [1, T]", "input_pos": "int64 [T]"},
            "outputs": {"logits": "float32 [1, T, V]"}, "dynamic_T": [1, max_chunk],
            # custom ops the runtime must register before loading (edgekit.kernels.ops.load_et_kernels),
            # as the serialized program calls them
            "custom_ops": sorted(calls), "custom_op_calls": sum(calls.values()),
            "fused_linear_groups": qlow["fused_groups"], **stats}
