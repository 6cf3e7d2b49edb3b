"""Engine backends over exported programs: ExecuTorch (.pte) and onnxruntime (.onnx).

Both satisfy ``edgekit.runtime.engine.Backend``: ``forward(tokens, start_pos) -> logits (T, V)``.
Rolling back is the engine passing a smaller ``start_pos``: the ExecuTorch program masks its
stale cache rows by position, the ONNX backend slices its past K/V to ``start_pos``.

Example::

    be = ExecuTorchBackend("pkg/model.pte")
    eng = Engine(be, tokenizer)
    eng.step([1, 5, 9]); eng.rollback(1); eng.step([7])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgekit.errors import PackageError, UserError
from edgekit.export.package import EDGEKIT_ABI


def _check_fits(start_pos: int, T: int, max_seq_len: int) -> None:
    if start_pos < 0 or T < 1 or start_pos + T > max_seq_len:
        raise UserError(f"tokens at positions {start_pos}..{start_pos + T - 1} do not fit max_seq_len {max_seq_len}",
                        "shorten the input or re-export with a larger --max-seq-len")


def set_executorch_threads(n: int | None) -> None:
    """Resize ExecuTorch's shared threadpool (XNNPACK); None leaves the default."""
    if n:
        from executorch.extension.pybindings import _C

        _C._unsafe_reset_threadpool(int(n))


class ExecuTorchBackend:
    """A loaded .pte following edgekit ABI 1 (see edgekit/export/executorch.py).

    Each instance loads its own ``forward`` Method, which owns its own KV cache buffers, so two
    backends over the same file are independent conversations.
    """

    name = "executorch"

    def __init__(self, pte_path: str | Path, threads: int | None = None,
                 custom_ops: bool = False) -> None:
        """``custom_ops``: the program calls edgekit::* operators (manifest
        ``programs.executorch.custom_ops``); their C++ library is loaded first."""
        from executorch.runtime import Runtime

        self.path = Path(pte_path)
        if custom_ops:
            from edgekit.kernels.ops import load_et_kernels

            load_et_kernels()
        set_executorch_threads(threads)
        try:
            self.program = Runtime.get().load_program(self.path)
        except (RuntimeError, ValueError) as e:
            raise PackageError(f"{self.path}: ExecuTorch cannot load it ({str(e).splitlines()[0]})",
                               "re-export the package") from None
        names = set(self.program.method_names)
        if "forward" not in names or "get_edgekit_abi" not in names:
            raise PackageError(f"{self.path}: not an edgekit program (methods {sorted(names)})",
                               "export it with `edgekit export`")
        abi = self.constant("get_edgekit_abi")
        if abi != EDGEKIT_ABI:
            raise PackageError(f"{self.path}: edgekit ABI {abi}, this runtime speaks {EDGEKIT_ABI}",
                               "re-export with this edgekit version")
        self.max_seq_len = self.constant("get_max_seq_len")
        self.max_chunk = self.constant("get_max_chunk")
        self.vocab_size = self.constant("get_vocab_size")
        self.n_layers = self.constant("get_n_layers")
        self.method = self.program.load_method("forward")
        # Programs exported with --tree-verify: verify_tree/compact share forward's KV buffers
        # (host methods of one loaded program share one set of memory arenas).
        self.supports_tree = {"verify_tree", "compact"} <= names
        self._verify = self.program.load_method("verify_tree") if self.supports_tree else None
        self._compact = self.program.load_method("compact") if self.supports_tree else None

    def forward_tree(self, tokens: list[int], start_pos: int, parents: list[int],
                     rows: list[int] | None = None, argmax_only: bool = False) -> torch.Tensor:
        """Logits (T, V) of a token tree at slots start_pos..start_pos+T-1 (node i sees the
        prefix and its ancestors, RoPE at start_pos + depth); ``rows`` / ``argmax_only`` as
        ``EagerBackend.forward_tree``. Needs a program exported with ``--tree-verify``."""
        from edgekit.runtime.spec import tree_depths, tree_visibility

        if not self.supports_tree:
            raise UserError(f"{self.path} has no verify_tree method", "re-export with `edgekit export --tree-verify`")
        n = len(tokens)
        if not 1 <= n <= self.max_chunk:
            raise UserError(f"a tree of {n} nodes; this program verifies 1..{self.max_chunk}",
                            f"use --tree B,T with T <= {self.max_chunk}")
        _check_fits(start_pos, n, self.max_seq_len)
        mask = torch.zeros(n, self.max_seq_len, dtype=torch.bool)  # (T, S)
        mask[:, :start_pos] = True
        mask[:, start_pos:start_pos + n] = tree_visibility(parents)
        rope = start_pos + torch.tensor(tree_depths(parents), dtype=torch.long)
        t = torch.tensor([tokens], dtype=torch.long)
        pos = torch.arange(start_pos, start_pos + n, dtype=torch.long)
        logits = self._verify.execute([t, pos, mask, rope])[0][0]  # (T, V)
        if argmax_only:
            return logits.argmax(-1)
        return logits if rows is None else logits[rows]

    def compact(self, start_pos: int, nodes: list[int]) -> None:
        """Move cache rows start_pos+nodes[i] to start_pos+i (the accepted tree path)."""
        if not self.supports_tree:
            raise UserError(f"{self.path} has no compact method", "re-export with `edgekit export --tree-verify`")
        src = torch.tensor(nodes, dtype=torch.long) + start_pos
        dst = torch.arange(start_pos, start_pos + len(nodes), dtype=torch.long)
        self._compact.execute([src, dst])

    def constant(self, name: str) -> int:
        return int(self.program.load_method(name).execute([])[0])

    def forward(self, tokens: list[int], start_pos: int) -> torch.Tensor:
        T = len(tokens)
        if not 1 <= T <= self.max_chunk:
            raise UserError(f"{T} tokens in one call; this program takes 1..{self.max_chunk}",
                            "feed longer inputs in chunks (Engine.prefill does)")
        _check_fits(start_pos, T, self.max_seq_len)
        t = torch.tensor([tokens], dtype=torch.long)
        pos = torch.arange(start_pos, start_pos + T, dtype=torch.long)
        return self.method.execute([t, pos])[0][0]  # (T, V)


class OnnxBackend:
    """An onnxruntime session over the concat-cache ONNX program (see edgekit/export/onnx.py).

    Keeps the past K/V as numpy arrays (1, n_kv, past_len, hd) per layer; a call at
    ``start_pos < past_len`` first slices the past to ``start_pos`` (rollback). A program
    exported with ``--tree-verify`` has an ``attention_mask`` input: ``supports_tree`` is then
    true and ``forward_tree`` / ``compact`` verify token trees.
    """

    name = "onnx"

    def __init__(self, onnx_path: str | Path, n_layers: int, max_seq_len: int, vocab_size: int,
                 max_chunk: int | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(onnx_path)
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            self.sess = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise PackageError(f"{self.path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})",
                               "re-export the package") from None
        self.n_layers = n_layers
        self.max_seq_len = max_seq_len
        self.max_chunk = max_chunk or max_seq_len
        self.vocab_size = vocab_size
        inp = {i.name: i for i in self.sess.get_inputs()}
        k0 = inp.get("past_key_values.0.key")
        if k0 is None or "input_ids" not in inp or "position_ids" not in inp:
            raise PackageError(f"{self.path}: inputs {sorted(inp)} do not follow the edgekit ONNX contract",
                               "re-export the package")
        self.n_kv, self.hd = int(k0.shape[1]), int(k0.shape[3])
        self.out_names = [o.name for o in self.sess.get_outputs()]
        self.supports_tree = "attention_mask" in inp
        self.reset()

    def reset(self) -> None:
        empty = np.zeros((1, self.n_kv, 0, self.hd), np.float32)
        self.past = [(empty, empty) for _ in range(self.n_layers)]
        self.past_len = 0

    def forward(self, tokens: list[int], start_pos: int) -> torch.Tensor:
        T = len(tokens)
        mask = None
        if self.supports_tree:  # a --tree-verify program: plain decoding feeds the causal mask
            keys = np.arange(start_pos + T)
            mask = keys[None, :] <= np.arange(start_pos, start_pos + T)[:, None]  # (T, P+T)
        return self._run(tokens, start_pos, np.arange(start_pos, start_pos + T, dtype=np.int64), mask)

    def forward_tree(self, tokens: list[int], start_pos: int, parents: list[int],
                     rows: list[int] | None = None, argmax_only: bool = False) -> torch.Tensor:
        """Logits (T, V) of a token tree at slots start_pos..start_pos+T-1 (node i sees the
        prefix and its ancestors, RoPE at start_pos + depth); ``rows`` / ``argmax_only`` as
        ``EagerBackend.forward_tree``. Cache rows at and after ``start_pos`` are dropped first,
        then the tree's rows appended in node order. Needs a program exported with ``--tree-verify``.

        Raises ``UserError`` for a program without the ``attention_mask`` input or a tree that
        does not fit ``max_seq_len``.
        """
        from edgekit.runtime.spec import tree_depths, tree_visibility

        if not self.supports_tree:
            raise UserError(f"{self.path} has no attention_mask input (tree verification)",
                            "re-export with `edgekit export --tree-verify`")
        n = len(tokens)
        if len(parents) != n:
            raise ValueError(f"{n} tree tokens but {len(parents)} parents")
        _check_fits(start_pos, n, self.max_seq_len)
        mask = np.ones((n, start_pos + n), dtype=bool)  # (T, P+T): the whole prefix
        mask[:, start_pos:] = tree_visibility(parents).numpy()
        pos = start_pos + np.asarray(tree_depths(parents), dtype=np.int64)
        logits = self._run(tokens, start_pos, pos, mask)
        if argmax_only:
            return logits.argmax(-1)
        return logits if rows is None else logits[rows]

    def compact(self, start_pos: int, nodes: list[int]) -> None:
        """Keep cache rows [0, start_pos) and start_pos+nodes[i] at start_pos+i (the accepted
        tree path); the other tree rows are dropped (the new past arrays hold only the kept rows)."""
        if not self.supports_tree:
            raise UserError(f"{self.path} has no attention_mask input (tree verification)",
                            "re-export with `edgekit export --tree-verify`")
        src = start_pos + np.asarray(nodes, dtype=np.int64)
        if src.size and not (start_pos <= src.min() and src.max() < self.past_len):
            raise ValueError(f"rows {src.tolist()} outside the tree at [{start_pos}, {self.past_len})")
        keep = np.concatenate([np.arange(start_pos, dtype=np.int64), src])
        self.past = [(k[:, :, keep], v[:, :, keep]) for k, v in self.past]  # fancy indexing copies
        self.past_len = start_pos + len(nodes)

    def _run(self, tokens: list[int], start_pos: int, position_ids: np.ndarray,
             mask: np.ndarray | None) -> torch.Tensor:
        """Append ``tokens`` after cache row ``start_pos`` (rolling back first) -> logits (T, V)."""
        _check_fits(start_pos, len(tokens), self.max_seq_len)
        if start_pos > self.past_len:
            raise ValueError(f"start_pos {start_pos} is past the cached length {self.past_len}")
        if start_pos < self.past_len:  # rollback: forget rows >= start_pos
            self.past = [(k[:, :, :start_pos], v[:, :, :start_pos]) for k, v in self.past]
            self.past_len = start_pos
        feed = {"input_ids": np.asarray([tokens], dtype=np.int64), "position_ids": position_ids[None]}
        if mask is not None:
            feed["attention_mask"] = mask
        for i, (k, v) in enumerate(self.past):
            feed[f"past_key_values.{i}.key"] = k
            feed[f"past_key_values.{i}.value"] = v
        outs = self.sess.run(self.out_names, feed)
        self.past = [(outs[1 + 2 * i], outs[2 + 2 * i]) for i in range(self.n_layers)]
        self.past_len = start_pos + len(tokens)
        return torch.from_numpy(outs[0][0])  # (T, V)
