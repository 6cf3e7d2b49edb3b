"""The native runner (C++ over the executorch wheel) against the eager reference, and its errors.

The runner is built once per session (cached by source hash, so usually only on the first run
after an edit). A missing cmake or compiler makes these tests FAIL, not skip: CI has both.
Test programs are exported here with the edgekit ABI-1 contract (forward(tokens, input_pos) ->
logits, KV cache as mutable buffers, int constant methods).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.errors import PackageError, UserError
from edgekit.models.config import ModelArgs
from edgekit.models.llama import Transformer
from edgekit.runtime.engine import EagerBackend, Engine

from conftest import run_cli


def export_pte(model: Transformer, path: Path, max_chunk: int, abi: int = 1) -> Path:
    """Export ``model`` as an edgekit ABI program lowered to XNNPACK; returns ``path``."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from torch.export import Dim, export

    a = model.args
    T = Dim("T", min=1, max=max_chunk)
    example = (torch.zeros(1, 2, dtype=torch.long), torch.arange(2))
    with torch.no_grad():
        # Deferred runtime asserts: otherwise the (T * min(hd, 2*hd*T)) reshape guard makes
        # torch.export reject T=1 as a valid chunk length.
        ep = export(model.eval(), example, dynamic_shapes=({1: T}, {0: T}), strict=False,
                    prefer_deferred_runtime_asserts_over_guards=True)
    consts = {"get_max_seq_len": a.max_seq_len, "get_max_chunk": max_chunk, "get_vocab_size": a.vocab_size,
              "get_n_layers": a.n_layers, "get_edgekit_abi": abi, "get_bos_id": a.bos_id,
              "get_eos_id": a.eos_ids[0]}
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()], constant_methods=consts,
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    path.write_bytes(edge.to_executorch().buffer)
    return path


def eager_greedy(model: Transformer, prompt: list[int], n: int, max_chunk: int) -> list[int]:
    eng = Engine(EagerBackend(model, max_chunk=max_chunk), None, stop_ids=[])
    return eng.generate(prompt, n).tokens


@pytest.fixture(scope="session")
def runner() -> Path:
    from edgekit.runtime.native import build_runner_info

    info = build_runner_info()  # raises NativeBuildError (-> test error) without cmake/g++
    return Path(info.path)


@pytest.fixture(scope="session")
def stories_pte(stories_dir, tmp_path_factory):
    from edgekit.models.load import load_model

    lm = load_model(stories_dir, max_seq_len=128)
    path = export_pte(lm.model, tmp_path_factory.mktemp("pte") / "stories.pte", max_chunk=4)
    return lm, path


def tiny_model(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, vocab_size=256,
                     max_seq_len=64, rope_theta=10000.0, **kw)
    m = Transformer(args).eval()
    with torch.no_grad():  # non-trivial norms so they matter for parity
        for mod in m.modules():
            if hasattr(mod, "eps"):
                mod.weight.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="session")
def tiny_pte(tmp_path_factory):
    m = tiny_model()
    return m, export_pte(m, tmp_path_factory.mktemp("pte") / "tiny.pte", max_chunk=8)


def test_runner_builds_and_is_cached(runner):
    from edgekit.runtime.native import build_runner_info, runner_path

    assert runner.exists() and os.access(runner, os.X_OK)
    again = build_runner_info()
    assert not again.built and Path(again.path) == runner == runner_path()
    p = subprocess.run([str(runner), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--prompt-ids" in p.stdout


def test_golden_stories260k_matches_eager(runner, stories_pte):
    from edgekit.runtime.native import generate_native

    lm, pte = stories_pte
    prompt = lm.tokenizer.encode("Once upon a time")
    want = eager_greedy(lm.model, prompt, 48, max_chunk=4)
    res = generate_native(pte, prompt, 48, stop_ids=(), threads=1)
    assert res["tokens"] == want
    assert res["new_tokens"] == 48 and res["prompt_tokens"] == len(prompt) and res["stop_reason"] == "length"
    assert res["meta"] == {"abi": 1, "max_seq_len": 128, "max_chunk": 4, "vocab_size": 512, "n_layers": 5,
                           "bos_id": 1, "eos_id": 2}
    assert res["threads"] == 1
    text = lm.tokenizer.decode(prompt + res["tokens"])
    assert text.startswith("Once upon a time, there was a little girl named Lily"), text
    for k in ("prefill_ms", "ttft_ms", "decode_ms", "decode_tok_s", "peak_rss_mib"):
        assert res[k] > 0, k
    assert res["ttft_ms"] >= res["prefill_ms"]


def test_golden_random_tiny_llama_matches_eager(runner, tiny_pte):
    from edgekit.runtime.native import generate_native

    m, pte = tiny_pte
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 256, (19,), generator=g).tolist()  # 3 chunks of 8: 8 + 8 + 3
    want = eager_greedy(m, prompt, 24, max_chunk=8)
    res = generate_native(pte, prompt, 24, stop_ids=(), threads=2)
    assert res["tokens"] == want


def test_stop_token_and_context_limit(runner, tiny_pte):
    from edgekit.runtime.native import generate_native

    m, pte = tiny_pte
    prompt = [3, 5, 7]
    free = eager_greedy(m, prompt, 10, max_chunk=8)
    stop = free[4]
    first = free.index(stop)
    res = generate_native(pte, prompt, 10, stop_ids=[stop])
    assert res["tokens"] == free[:first] and res["stop_reason"] == "eos"
    # Cache full: 60-token prompt in a 64-slot program leaves room for 4 more writes + 1 token.
    long = (list(range(1, 61)))
    res = generate_native(pte, long, 20, stop_ids=())
    assert res["stop_reason"] == "context" and res["new_tokens"] == 64 - 60 + 1
    with pytest.raises(UserError, match="exceeds max_seq_len 64"):
        generate_native(pte, list(range(1, 70)), 4)
    with pytest.raises(UserError, match="outside the vocabulary"):
        generate_native(pte, [1, 256], 4)


def test_bench_mode(runner, tiny_pte):
    from edgekit.runtime.native import bench_native

    _, pte = tiny_pte
    res = bench_native(pte, [1, 2, 3, 4, 5], gen_len=8, reps=3, threads=1)
    assert res["mode"] == "bench" and res["reps"] == 3 and res["warmup"] == 1 and len(res["runs"]) == 3
    assert all(r["new_tokens"] == 8 and r["prompt_tokens"] == 5 for r in res["runs"])
    d = res["decode_ms"]
    assert d["min"] <= d["median"] <= d["max"] and d["min"] > 0
    assert res["decode_tok_s"]["median"] > 0 and res["peak_rss_mib"] > 0


def _raw(runner: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(runner), *args], capture_output=True, text=True, timeout=120)


def test_missing_pte_is_one_line_error(runner, tmp_path):
    from edgekit.runtime.native import generate_native

    p = _raw(runner, "--model", str(tmp_path / "nope.pte"), "--prompt-ids", "1,2")
    assert p.returncode == 3 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model file not found:") and "| hint:" in lines[0]
    with pytest.raises(PackageError, match="not found"):
        generate_native(tmp_path / "nope.pte", [1, 2], 4)


def test_corrupt_pte_is_one_line_error(runner, tiny_pte, tmp_path):
    _, pte = tiny_pte
    bad = tmp_path / "bad.pte"
    bad.write_bytes(pte.read_bytes()[:4000])
    p = _raw(runner, "--model", str(bad), "--prompt-ids", "1")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 4 and len(lines) == 1 and lines[0].startswith("error: cannot load bad.pte"), p.stderr
    junk = tmp_path / "junk.pte"
    junk.write_bytes(b"not a program" * 100)
    p = _raw(runner, "--model", str(junk), "--prompt-ids", "1")
    assert p.returncode == 4 and len(p.stderr.strip().splitlines()) == 1


def test_abi_mismatch_is_one_line_error(runner, tmp_path):
    from edgekit.runtime.native import generate_native

    from executorch.exir import to_edge

    class Add(torch.nn.Module):  # the ABI is checked before forward is even loaded
        def forward(self, a):
            return a + 1

    pte = tmp_path / "model.pte"
    consts = {"get_edgekit_abi": 99, "get_max_seq_len": 64, "get_max_chunk": 4}
    pte.write_bytes(to_edge(torch.export.export(Add(), (torch.ones(2),)), constant_methods=consts)
                    .to_executorch().buffer)
    p = _raw(runner, "--model", str(pte), "--prompt-ids", "1,2")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 5 and p.stdout == "" and len(lines) == 1, p.stderr
    assert lines[0].startswith("error: model.pte has edgekit ABI 99, runner supports 1 | hint: re-export")
    with pytest.raises(PackageError, match="ABI 99"):
        generate_native(pte, [1, 2], 4)


def test_bad_args(runner, tiny_pte):
    _, pte = tiny_pte
    for args in (["--model", str(pte)], ["--model", str(pte), "--prompt-ids", "1,x"],
                 ["--model", str(pte), "--prompt-ids", "1", "--threads", "-1"], ["--bogus"],
                 ["--model", str(pte), "--prompt-ids", "1", "--max-new-tokens", "0"]):
        p = _raw(runner, *args)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
        assert p.stderr.startswith("error: ")


def test_cli_build_runner_json(runner):
    import json

    r = run_cli("build-runner", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert Path(d["path"]) == runner and d["built"] is False and d["executorch_version"].startswith("1.5.1")


# ---- packed-weight kernels -------------------------------------------------------------------

KERNEL_SHAPES = [  # (M, N, K, group_size)
    (1, 37, 192, 64), (1, 5, 64, 32), (3, 5, 64, 32), (7, 37, 192, 64),  # M=7: 4-row tile + 3 singles
    (2, 9, 100, 32),  # K not a multiple of the group: padded last group
    (1, 6, 96, None),  # one group per row
    (5, 3, 40, 8),  # group too small for the SIMD block: scalar only
]
KERNEL_TOL = {2: 2e-5, 3: 2e-5, 4: 2e-5, 8: 3e-5}  # relative to max |y|; fp32 sums over <= 192 terms


def _packed_case(bits: int, N: int, K: int, group: int | None, seed: int):
    import numpy as np

    from edgekit.quant.layout import Layout, dequantize_reference, pack_reference

    rng = np.random.default_rng(seed)
    lay = Layout(bits, group)
    G = lay.n_groups(K)
    codes = rng.integers(0, 2 ** bits, size=(N, K))
    q = pack_reference(codes, lay)
    scale = rng.uniform(0.01, 0.1, size=(N, G)).astype(np.float16)
    zero = rng.uniform(-0.2, 0.2, size=(N, G)).astype(np.float16)
    w = dequantize_reference(q, scale, zero, lay, K)  # independent scalar numpy reference
    return q, scale, zero, w


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=lambda s: "M{}N{}K{}g{}".format(*s))
def test_kernel_matches_numpy_reference(runner, bits, shape):
    import numpy as np

    from edgekit.kernels.cpu import available_impls, linear_wq, picked_impl

    M, N, K, group = shape
    q, scale, zero, w = _packed_case(bits, N, K, group, seed=M * 1000 + N + bits)
    x = np.random.default_rng(bits).standard_normal((M, K)).astype(np.float32)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    simd_ok = bits in (2, 4) and (group or K) % (32 if bits == 2 else 16) == 0
    impls = ["auto", "scalar"] + [i for i in available_impls() if i in ("avx2", "neon")]
    for impl in impls:
        if impl in ("avx2", "neon") and not simd_ok:
            with pytest.raises(UserError, match="unsupported"):
                linear_wq(x, q, scale, zero, bits, group, impl=impl)
            continue
        y = linear_wq(x, q, scale, zero, bits, group, impl=impl)
        assert y.shape == (M, N)
        err = float(np.abs(y - ref).max() / np.abs(ref).max())
        assert err < KERNEL_TOL[bits], (impl, err)
    assert picked_impl(K, bits, group) == ("scalar" if not simd_ok or len(impls) == 2 else impls[-1])


def test_kernel_simd_is_exercised_on_this_cpu(runner):
    """x86-64 CI machines have AVX2; say so loudly if the SIMD path silently fell back."""
    import platform

    from edgekit.kernels.cpu import available_impls

    impls = available_impls()
    if platform.machine() in ("x86_64", "AMD64"):
        import cpuinfo

        flags = set(cpuinfo.get_cpu_info().get("flags", []))
        if not {"avx2", "fma"} <= flags:
            pytest.skip("this x86 CPU has no AVX2+FMA: only the scalar kernel can be checked")
        assert "avx2" in impls
    elif platform.machine() in ("aarch64", "arm64"):
        assert "neon" in impls
    else:
        pytest.skip(f"no SIMD kernel for {platform.machine()}")


@pytest.mark.parametrize("bits,N,K,group,act_bits", [(2, 576, 576, 64, None), (2, 577, 576, 64, 8),
                                                     (4, 203, 896, 32, 8), (8, 97, 320, None, 8)])
def test_kernel_multithreaded_matches_single(runner, bits, N, K, group, act_bits):
    """The pool splits rows in fixed blocks per thread (odd sizes, more threads than cores):
    every row is computed the same way whichever thread takes it, so outputs are bitwise equal."""
    import numpy as np

    from edgekit.kernels.cpu import get_num_threads, linear_wq, set_num_threads

    q, scale, zero, _ = _packed_case(bits, N, K, group, seed=5)
    x = np.random.default_rng(0).standard_normal((3, K)).astype(np.float32)
    before = get_num_threads()
    try:
        set_num_threads(1)
        y1 = linear_wq(x, q, scale, zero, bits, group, act_bits=act_bits)
        for t in (2, 3, 5):
            set_num_threads(t)
            assert get_num_threads() == t
            np.testing.assert_array_equal(linear_wq(x, q, scale, zero, bits, group, act_bits=act_bits), y1)
    finally:
        set_num_threads(before)


def _pool_probe(*calls: tuple) -> list[tuple[float, int]]:
    """``pool_balance_probe(*args, **kw)`` for each (args, kw) in a fresh process: inside pytest's
    process, thread pools of torch (OpenMP) and onnxruntime keep spinning on the two cores after
    their work and take the cores from the probe's threads for milliseconds at a time."""
    import json
    import sys

    code = ("import json, sys\nfrom edgekit.kernels.cpu import pool_balance_probe\n"
            "print(json.dumps([pool_balance_probe(*a, **k) for a, k in json.loads(sys.argv[1])]))")
    p = subprocess.run([sys.executable, "-c", code, json.dumps([list(c) for c in calls])],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return [tuple(r) for r in json.loads(p.stdout.splitlines()[-1])]


def test_pool_split_learns_a_slower_thread(runner):
    """The pool's split is learned per kind of region: when the workers' rows cost 3x the
    caller's, the caller's share moves from 1/2 toward 3/4 within a few dozen regions, and with
    equal costs it stays near even. In every region every row runs exactly once. (Timing-based:
    the best of three tries counts; more threads than cores only checks the rows.)"""
    from edgekit.kernels.cpu import pool_balance_probe

    res = _pool_probe(*[((2, 40, 200, 1000, 3000), {})] * 3, *[((2, 40, 201, 1000, 1000), {})] * 3,
                      ((3, 30, 301, 500, 1500), {}))
    assert all(bad == 0 for _, bad in res)
    assert max(share for share, _ in res[:3]) > 0.6, res[:3]  # even split: 0.5; balanced: 0.75
    assert any(0.3 < share < 0.7 for share, _ in res[3:6]), res[3:6]
    assert pool_balance_probe(1, 3, 50, 0, 0) == (1.0, 0)
    with pytest.raises(UserError):
        pool_balance_probe(0, 1, 10, 0, 0)


def test_pool_large_regions_steal_rows(runner):
    """A large region (rows x work hint >= 2^22) is balanced within the region: a worker whose
    first chunk cannot finish until the caller has run every other row (``hold``) gets released
    only because the caller takes the rest of the worker's block, so in the very first region the
    caller runs all but that chunk (8 rows of 400; all 400 if the worker never got a core in
    time). A small region does not steal (even split). Every row runs exactly once, over many
    regions and thread counts."""
    big, small, *more = _pool_probe(((2, 1, 400, 0, 0), {"kind": 1 << 22, "hold": True}),
                                    ((2, 1, 400, 0, 0), {"kind": 1, "hold": True}),
                                    *[((t, 20, n, 200, 200), {"kind": 1 << 22})
                                      for t, n in [(2, 1001), (3, 777), (5, 64)]])
    assert big[1] == 0 and big[0] >= (400 - 8) / 400, big  # without stealing: 0.5, after a 2 s hold
    assert small == (0.5, 0), small
    assert all(bad == 0 for _, bad in more), more


def test_core_roundtrip_probe(runner):
    """The two-thread cache-line ping-pong the speed benchmark records per round: it finishes
    and gives a positive time (bounded loosely: a loaded CI box deschedules the threads); a
    count below 1 is a user error."""
    from edgekit.errors import UserError
    from edgekit.kernels.cpu import core_roundtrip_ns

    ns = core_roundtrip_ns(20_000)
    assert 1.0 < ns < 1e6, ns
    with pytest.raises(UserError):
        core_roundtrip_ns(0)


def test_kernel_pool_threads_concurrency_and_fork(runner):
    """edgekit's own worker pool (kernels/cpu/pool.cpp): every thread count gives the 1-thread
    rows bit for bit (more threads than cores too), back-to-back jobs after its workers fell
    asleep, two Python threads calling at once (one runs serially), and a forked child, which
    has none of the parent's workers, still finishes its parallel calls."""
    import os
    import threading
    import time

    import numpy as np

    from edgekit.kernels.cpu import get_num_threads, linear_wq, set_num_threads

    cases = [_packed_case(2, 1000, 576, 64, seed=7), _packed_case(4, 333, 1536, 32, seed=8)]
    xs = [np.random.default_rng(1).standard_normal((1, K)).astype(np.float32) for K in (576, 1536)]
    before = get_num_threads()
    try:
        set_num_threads(1)
        ref = [[linear_wq(x, q, s, z, b, g, act_bits=a) for (q, s, z, _), x, b, g in
                zip(cases, xs, (2, 4), (64, 32))] for a in (None, 8)]

        def run_all():
            return [[linear_wq(x, q, s, z, b, g, act_bits=a) for (q, s, z, _), x, b, g in
                     zip(cases, xs, (2, 4), (64, 32))] for a in (None, 8)]

        def same(got):
            for r_a, g_a in zip(ref, got):
                for r, g in zip(r_a, g_a):
                    np.testing.assert_array_equal(r, g)

        for n in (2, 3, 5):
            set_num_threads(n)
            for _ in range(50):
                same(run_all())
        set_num_threads(2)
        time.sleep(0.01)  # past the workers' spin budget: they sleep and must be woken
        same(run_all())

        errors = []

        def caller():
            try:
                for _ in range(30):
                    same(run_all())
            except Exception as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        ts = [threading.Thread(target=caller) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in ts), "concurrent kernel calls hung"
        assert not errors, errors

        pid = os.fork()
        if pid == 0:  # the child: exit code 0 only when its parallel calls finish and match
            code = 1
            try:
                same(run_all())
                code = 0
            finally:
                os._exit(code)
        deadline = time.time() + 60
        while time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            pytest.fail("a forked child hung in a parallel kernel call")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        set_num_threads(before)


def test_kernel_rejects_bad_shapes(runner):
    import numpy as np

    from edgekit.kernels.cpu import linear_wq

    q, scale, zero, _ = _packed_case(2, 5, 64, 32, seed=0)
    with pytest.raises(UserError, match="do not match"):
        linear_wq(np.zeros((1, 64), np.float32), q[:, :-1], scale, zero, 2, 32)
    with pytest.raises(UserError, match="in_features"):
        linear_wq(np.zeros((1, 63), np.float32), q, scale, zero, 2, 32, in_features=64)


class _QLinear(torch.nn.Module):
    """A linear with RTN-quantized packed weights calling edgekit::linear_w{bits}."""

    def __init__(self, lin: torch.nn.Linear, bits: int, group: int) -> None:
        super().__init__()
        from edgekit.quant.layout import Layout, pack_torch

        import edgekit.kernels.ops  # noqa: F401  (registers the ops)

        w = lin.weight.detach().float()
        N, K = w.shape
        wg = w.view(N, K // group, group)
        lo, hi = wg.amin(-1), wg.amax(-1)
        scale = ((hi - lo) / (2 ** bits - 1)).clamp_min(1e-6).half()
        zero = lo.half()
        codes = ((wg - zero.float().unsqueeze(-1)) / scale.float().unsqueeze(-1)).round().clamp(0, 2 ** bits - 1)
        self.register_buffer("qweight", pack_torch(codes.view(N, K).to(torch.uint8), Layout(bits, group)))
        self.register_buffer("scale", scale)
        self.register_buffer("zero", zero)
        self.bits, self.group, self.K = bits, group, K

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = torch.ops.edgekit.linear_w2 if self.bits == 2 else torch.ops.edgekit.linear_w4
        return op(x, self.qweight, self.scale, self.zero, self.group, self.K)


def _quantize_tiny(m: Transformer, bits: int, group: int) -> Transformer:
    for layer in m.layers:
        for parent, names in ((layer.attention, ("wq", "wk", "wv", "wo")), (layer.feed_forward, ("w1", "w2", "w3"))):
            for n in names:
                setattr(parent, n, _QLinear(getattr(parent, n), bits, group))
    return m


@pytest.mark.parametrize("bits", [2, 4])
def test_custom_op_program_runs_in_python_runtime_and_runner(runner, bits, tmp_path):
    """A model whose linears are edgekit::linear_w{bits}: eager (torch reference op), the Python
    ExecuTorch runtime with the C++ op library loaded, and the native runner agree."""
    from executorch.runtime import Runtime

    from edgekit.kernels.ops import load_et_kernels
    from edgekit.runtime.native import generate_native

    m = _quantize_tiny(tiny_model(seed=7), bits, group=32)
    pte = export_pte(m, tmp_path / "q.pte", max_chunk=8)
    prompt = [5, 9, 33, 2, 77, 100, 4, 8, 15, 16, 23]
    with torch.no_grad():
        want_logits = m(torch.tensor([prompt[:8]]), torch.arange(8))
    load_et_kernels()
    method = Runtime.get().load_program(str(pte)).load_method("forward")
    got = method.execute([torch.tensor([prompt[:8]]), torch.arange(8)])[0]
    torch.testing.assert_close(got, want_logits, rtol=1e-4, atol=1e-4)
    want = eager_greedy(m, prompt, 16, max_chunk=8)
    res = generate_native(pte, prompt, 16, stop_ids=(), threads=2)
    assert res["tokens"] == want


def test_torch_op_reference_and_fake(runner):
    import numpy as np

    import edgekit.kernels.ops  # noqa: F401
    from edgekit.kernels.cpu import linear_wq

    q, scale, zero, w = _packed_case(2, 37, 192, 64, seed=1)
    x = torch.randn(2, 3, 192)
    y = torch.ops.edgekit.linear_w2(x, torch.from_numpy(q), torch.from_numpy(scale), torch.from_numpy(zero), 64, 192)
    assert y.shape == (2, 3, 37)
    torch.testing.assert_close(y, x @ torch.from_numpy(w).T, rtol=1e-5, atol=1e-5)
    native = linear_wq(x.numpy(), q, scale, zero, 2, 64)
    np.testing.assert_allclose(native, y.numpy(), rtol=1e-4, atol=1e-5)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fy = torch.ops.edgekit.linear_w2(mode.from_tensor(x), mode.from_tensor(torch.from_numpy(q)),
                                         mode.from_tensor(torch.from_numpy(scale)),
                                         mode.from_tensor(torch.from_numpy(zero)), 64, 192)
    assert fy.shape == (2, 3, 37) and fy.dtype == torch.float32


def test_kernel_selftest_native(runner):
    """The C++ self-test (no Python in the loop) passes on this CPU's SIMD path."""
    exe = runner.parent / "kernels" / "edgekit_kernels_selftest"
    p = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    if re.search(r"^0 checked", p.stdout, re.M):  # the total line (not "660 checked")
        pytest.skip("no SIMD implementation on this CPU; scalar checked by the other kernel tests")


@pytest.mark.parametrize("march", ["armv8-a", "armv8.2-a+dotprod"])
def test_kernel_neon_under_qemu(tmp_path, march):
    """Cross-compile the kernels for aarch64 and run the NEON self-test under qemu-aarch64, the
    float rows and the int8-activation rows against the scalar reference. Whatever -march says,
    both a8 variants are built (base SMULL/SADALP, impl 3, and SDOT, impl 5) and HWCAP_ASIMDDP
    picks at run time: qemu's ``-cpu max`` has the dot product and runs and passes both; a CPU
    model without it (Cortex-A53, armv8.0) runs only the base one, and does not die of SIGILL."""
    import shutil

    tools = {t: shutil.which(t) for t in ("aarch64-linux-gnu-g++", "aarch64-linux-gnu-objdump", "qemu-aarch64")}
    if not all(tools.values()):
        missing = ", ".join(t for t, v in tools.items() if not v)
        pytest.skip(f"needs {missing} (apt-get install g++-aarch64-linux-gnu qemu-user) to check the NEON "
                    "path on this host")
    cxx, objdump, qemu = tools.values()
    src = Path(__file__).resolve().parents[1] / "edgekit" / "kernels" / "cpu"
    exe = tmp_path / "selftest"
    # attn.cpp and ew.cpp (portable code on ARM) are linked in so the aarch64 build of them is checked too
    subprocess.run([cxx, "-std=c++17", "-O2", "-static", f"-march={march}", str(src / "wq_linear.cpp"),
                    str(src / "attn.cpp"), str(src / "ew.cpp"), str(src / "wq_selftest.cpp"), "-o", str(exe)],
                   check=True, capture_output=True, timeout=300)
    # SDOT is compiled in even for base armv8-a; there, only the a8_neondot copy may hold it (the
    # rest must run on any ARMv8 CPU). A v8.2 build may use SDOT anywhere, so is not checked so.
    dis = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(exe)], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    fn, in_dot, outside = "", 0, set()
    for line in dis.splitlines():
        if m := re.match(r"^[0-9a-f]+ <(.+)>:$", line):
            fn = m.group(1)
        elif "\tsdot\t" in line:
            in_dot += "a8_neondot" in fn
            if "a8_neondot" not in fn:
                outside.add(fn)
    assert in_dot > 0, "no SDOT in the a8_neondot kernels"
    if march == "armv8-a":
        assert not outside, f"SDOT outside the run-time-checked kernels: {sorted(outside)}"

    cpus = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True, timeout=60).stdout.split()
    no_dot = next((c for c in ("cortex-a53", "cortex-a57", "cortex-a72") if c in cpus), None)
    # (cpu, EDGEKIT_A8_IMPL, the a8 variants that must run, the automatic a8 pick). The override
    # names an impl (neon) to prefer, or one the CPU lacks (neondot), which is ignored. The v8.2
    # build runs only on a v8.2 CPU.
    runs = [("max", None, {"neon base": 3, "neon sdot": 5}, 5), ("max", "neon", {"neon base": 3, "neon sdot": 5}, 3)]
    if march == "armv8-a" and no_dot:
        runs.append((no_dot, "neondot", {"neon base": 3}, 3))
    for cpu, forced, want, pick in runs:
        env = {k: v for k, v in os.environ.items() if k != "EDGEKIT_A8_IMPL"}
        if forced:
            env["EDGEKIT_A8_IMPL"] = forced
        p = subprocess.run([qemu, "-cpu", cpu, str(exe)], capture_output=True, text=True, timeout=300, env=env)
        out = f"-cpu {cpu} EDGEKIT_A8_IMPL={forced}: rc={p.returncode}\n{p.stdout}{p.stderr}"
        assert p.returncode == 0 and "ok   impl=3 " in p.stdout, out
        assert re.search(r"^\d+ checked, 0 failed$", p.stdout, re.M), out
        # One summary per a8 variant that ran, counting its cases: every one an "ok" line.
        got = {m[1]: (int(m[0]), int(m[2]), int(m[3]))
               for m in re.findall(r"^a8 impl=(\d+) \((neon \w+)\): (\d+) checked, (\d+) failed$", p.stdout, re.M)}
        assert {name: v[0] for name, v in got.items()} == want, out
        # Half of each variant's cases are the row-interleaved (r16) layout of the same case.
        for impl, checked, failed in got.values():
            r16 = len(re.findall(rf"^ok   a8 r16 impl={impl} ", p.stdout, re.M))
            assert failed == 0 and checked == len(re.findall(rf"^ok   a8 impl={impl} ", p.stdout, re.M)) + r16, out
            assert r16 == checked // 2 >= 90, out
        assert re.search(rf"^a8 pick w2g64: impl={pick}, r16: impl={pick}$", p.stdout, re.M), out
    if march == "armv8-a" and not no_dot:
        pytest.skip("qemu-aarch64 lists no CPU model without the dot product (cortex-a53/a57/a72): only "
                    "-cpu max was run, so the run-time check on a CPU without SDOT is untested")


def test_non_edgekit_program_is_one_line_error(runner, tmp_path):
    """A valid ExecuTorch program without the edgekit constant methods is refused clearly."""
    from executorch.exir import to_edge

    class Add(torch.nn.Module):
        def forward(self, a):
            return a + 1

    pte = tmp_path / "plain.pte"
    pte.write_bytes(to_edge(torch.export.export(Add(), (torch.ones(2),))).to_executorch().buffer)
    p = _raw(runner, "--model", str(pte), "--prompt-ids", "1")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 4 and len(lines) == 1 and "is not an edgekit program" in lines[0], p.stderr


def test_build_errors_are_clear(tmp_path, monkeypatch):
    """No cmake -> NativeBuildError naming it; a failing compiler -> the build log's last lines."""
    import shutil

    import edgekit.runtime.native as native

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    real_which = shutil.which
    monkeypatch.setattr(native.shutil, "which", lambda name: None if name == "cmake" else real_which(name))
    with pytest.raises(native.NativeBuildError, match="cmake not found") as e:
        native.build_runner_info(force=True)
    assert "install CMake" in e.value.hint
    monkeypatch.setattr(native.shutil, "which", real_which)
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    with pytest.raises(native.NativeBuildError, match="configure failed") as e:
        native.build_runner_info(force=True)
    assert "failed.log" in e.value.hint and len(e.value.one_line().splitlines()) == 1
    assert not any(p.name.endswith("tmp") or ".tmp-" in p.name for p in (tmp_path / "cache" / "native").iterdir())


ARGMAX_DRIVER = r"""
#include <cstdio>
#include <vector>
#include "argmax.h"
int main() {  // rows on stdin: n, then n floats (as bit patterns, so NaN and -0 survive)
  long n;
  while (std::scanf("%ld", &n) == 1) {
    std::vector<float> x(n);
    for (long i = 0; i < n; ++i) {
      unsigned u;
      std::scanf("%x", &u);
      __builtin_memcpy(&x[i], &u, 4);
    }
    std::printf("%ld\n", static_cast<long>(edgekit::greedy_argmax(x.data(), n)));
  }
}
"""


def test_greedy_argmax_matches_numpy(tmp_path):
    """The runner's vectorised greedy pick returns the first index of the maximum, exactly as
    the scalar std::max_element loop: ties (first wins), -inf rows, signed zeros, lengths that
    are not a multiple of 8 or 32, the maximum in the tail, and NaN anywhere (the scalar loop
    decides those rows, whatever its NaN convention is)."""
    src = tmp_path / "drv.cpp"
    src.write_text(ARGMAX_DRIVER)
    exe = tmp_path / "drv"
    native = Path(__file__).resolve().parents[1] / "edgekit" / "runtime" / "native"
    subprocess.run(["g++", "-O2", "-std=c++17", f"-I{native}", str(src), "-o", str(exe)], check=True)
    rng = np.random.default_rng(0)
    rows: list[np.ndarray] = []
    for n in [1, 7, 8, 31, 32, 33, 63, 64, 100, 257, 1000, 49152]:
        rows.append(rng.standard_normal(n).astype(np.float32))
        t = rng.integers(0, 4, n).astype(np.float32)  # many ties
        rows.append(t)
        rows.append(np.full(n, -np.inf, np.float32))
        z = np.zeros(n, np.float32)
        z[::2] = -0.0
        rows.append(z)
        if n > 1:
            tail = rng.standard_normal(n).astype(np.float32)
            tail[-1] = 10.0  # the maximum in the last (tail) slot
            rows.append(tail)
            for where in {0, n // 2, n - 1}:
                r = rng.standard_normal(n).astype(np.float32)
                r[where] = np.nan
                rows.append(r)
    text = "".join(f"{len(r)} " + " ".join(f"{v:x}" for v in r.view(np.uint32)) + "\n" for r in rows)
    p = subprocess.run([str(exe)], input=text, capture_output=True, text=True, check=True)
    got = [int(v) for v in p.stdout.split()]

    def first_max(r: np.ndarray) -> int:  # std::max_element: keep the first, move on a <
        best = 0
        for i in range(1, len(r)):
            if r[best] < r[i]:
                best = i
        return best

    nan_rows = 0
    for r, g in zip(rows, got, strict=True):
        assert g == first_max(r), (len(r), g, first_max(r))
        if not np.isnan(r).any():
            assert g == int(np.argmax(r))  # torch/numpy agree where there is no NaN
        else:
            nan_rows += 1
    assert nan_rows > 0 and len(got) == len(rows)
