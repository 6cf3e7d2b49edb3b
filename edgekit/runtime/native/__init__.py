"""The native runner: build ``edgekit_runner`` (C++ over the executorch wheel's runtime) and run it.

The runner is configured and built with CMake on first use into
``$EDGEKIT_CACHE/native/<key>/`` (default ``~/.cache/edgekit/native/<key>/``), where ``key``
hashes the C++ sources (this directory and ``edgekit/kernels/cpu``), the executorch version and
the machine, so an edit or an upgrade rebuilds and two versions never share a binary. The build
happens in a temporary directory renamed into place, under a file lock, so concurrent first uses
build once and never see a half-built runner.

Program contract (edgekit ABI 1, shared with ``edgekit.export``): method ``forward(tokens int64
[1, T], input_pos int64 [T]) -> logits float32 [1, T, V]`` with 1 <= T <= ``get_max_chunk()`` and
the KV cache as mutable buffers, plus int constant methods ``get_max_seq_len``, ``get_max_chunk``,
``get_vocab_size``, ``get_n_layers``, ``get_edgekit_abi`` (== 1), ``get_bos_id``, ``get_eos_id``.

Example::

    from edgekit.runtime.native import generate_native
    res = generate_native("pkg/model.pte", [1, 403, 407], max_new_tokens=32, threads=2)
    res["tokens"], res["decode_tok_s"], res["peak_rss_mib"]
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from edgekit.errors import EdgekitError, InternalError, PackageError, UserError

SUPPORTED_ABI = 1
RUNNER_NAME = "edgekit_runner"
KERNELS_LIB_NAME = "libedgekit_kernels_cpu.so"  # plain C API (ctypes)
KERNELS_ET_LIB_NAME = "libedgekit_kernels_et.so"  # ExecuTorch custom operators

_HERE = Path(__file__).resolve().parent
_KERNELS_DIR = _HERE.parents[1] / "kernels" / "cpu"
_SOURCE_SUFFIXES = {".cpp", ".cc", ".c", ".h", ".hpp", ".txt", ".cmake"}

# Exit codes of edgekit_runner (edgekit::Code in edgekit_runner.h) -> error class.
_EXIT_ERRORS: dict[int, type[EdgekitError]] = {
    1: InternalError,  # runtime failure while executing
    2: UserError,  # bad arguments
    3: PackageError,  # model file missing
    4: PackageError,  # not a loadable / not an edgekit program
    5: PackageError,  # ABI mismatch
    6: UserError,  # prompt does not fit max_seq_len
}


class NativeBuildError(InternalError):
    """The native runner could not be configured or built (toolchain missing or failing)."""


@dataclass
class RunnerBuild:
    """Where a runner build lives and whether this call built it."""

    path: str  # the edgekit_runner executable
    kernels_lib: str | None  # ctypes-loadable kernel library, None if not built
    kernels_et_lib: str | None  # ExecuTorch custom-op library, None if not built
    key: str
    built: bool  # False: reused from the cache
    seconds: float  # build time (0 when reused)
    executorch_version: str

    def to_dict(self) -> dict:
        return asdict(self)


def executorch_dir() -> Path:
    """The installed executorch package root (holds share/cmake, include/, lib/)."""
    try:
        import executorch.version as etv
    except ImportError as e:  # pragma: no cover - executorch is a hard dependency
        raise NativeBuildError("the executorch package is not importable", "pip install executorch==1.5.1") from e
    return Path(etv.__file__).resolve().parent


def _executorch_version() -> str:
    import executorch.version as etv

    return f"{etv.__version__}+{getattr(etv, 'git_version', '') or ''}"


def native_sources() -> list[Path]:
    """The files whose content decides the build key: runner sources and CPU kernel sources."""
    files = [p for p in sorted(_HERE.iterdir()) if p.suffix in _SOURCE_SUFFIXES]
    if _KERNELS_DIR.is_dir():
        files += [p for p in sorted(_KERNELS_DIR.rglob("*")) if p.is_file() and p.suffix in _SOURCE_SUFFIXES]
    return files


def build_key() -> str:
    """Hash of the native sources, the executorch version and the machine (16 hex chars)."""
    h = hashlib.sha256()
    root = _HERE.parents[1]
    for f in native_sources():
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    h.update(_executorch_version().encode())
    h.update(f"{platform.machine()}-{sys.platform}".encode())
    h.update(os.environ.get("CXX", "").encode())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    """``$EDGEKIT_CACHE/native`` or ``~/.cache/edgekit/native``."""
    base = os.environ.get("EDGEKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgekit")
    return Path(base) / "native"


def _find_tools() -> tuple[str, str, str | None]:
    cmake = shutil.which("cmake")
    if cmake is None:
        raise NativeBuildError("cmake not found on PATH; the native runner cannot be built",
                               "install CMake >= 3.19 (apt-get install cmake, or pip install cmake)")
    cxx_env = os.environ.get("CXX")
    cxx = shutil.which(cxx_env) if cxx_env else (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++"))
    if cxx is None:
        raise NativeBuildError(f"no C++ compiler found ({'CXX=' + cxx_env if cxx_env else 'c++, g++, clang++'})",
                               "install a C++17 compiler (apt-get install g++) or set CXX")
    return cmake, cxx, shutil.which("ninja")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return " / ".join(line.strip() for line in lines[-n:] if line.strip())


def _clean_stale(root: Path, max_age_s: float = 3600.0) -> None:
    """Remove build directories left by killed builds (older than an hour, so never one that
    another process is still writing)."""
    now = time.time()
    for p in root.glob("*.tmp-*"):
        with contextlib.suppress(OSError):
            if p.is_dir() and now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)


def _result(dest: Path, key: str, built: bool, seconds: float) -> RunnerBuild:
    build = dest / "build"
    k = build / "kernels" / KERNELS_LIB_NAME
    ke = build / "kernels" / KERNELS_ET_LIB_NAME
    return RunnerBuild(path=str(build / RUNNER_NAME), kernels_lib=str(k) if k.exists() else None,
                       kernels_et_lib=str(ke) if ke.exists() else None, key=key, built=built,
                       seconds=round(seconds, 2), executorch_version=_executorch_version())


def build_runner_info(force: bool = False) -> RunnerBuild:
    """Build the runner (and the CPU kernel libraries) unless a build for this key exists.

    Args:
        force: rebuild even when a cached build exists.
    Returns:
        RunnerBuild with the executable path and whether it was built now.
    Raises:
        NativeBuildError: cmake or a C++ compiler is missing, or configure/build failed (the
            message carries the last lines of the build log and the log's path).
    """
    key = build_key()
    root = cache_root()
    dest = root / key
    exe = dest / "build" / RUNNER_NAME
    if exe.exists() and not force:
        return _result(dest, key, False, 0.0)
    cmake, cxx, ninja = _find_tools()
    with _locked(root / f"{key}.lock"):
        if exe.exists() and not force:  # built by another process while we waited
            return _result(dest, key, False, 0.0)
        _clean_stale(root)
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=root))
        log_path = tmp / "build.log"
        sys.stderr.write(f"edgekit: building the native runner into {dest} (about a minute at most)\n")
        configure = [cmake, "-S", str(_HERE), "-B", str(tmp / "build"), "-DCMAKE_BUILD_TYPE=Release",
                     f"-DCMAKE_PREFIX_PATH={executorch_dir()}", f"-DCMAKE_CXX_COMPILER={cxx}"]
        if ninja:
            configure += ["-G", "Ninja"]
        jobs = str(max(1, min(os.cpu_count() or 1, 8)))
        steps = [("configure", configure), ("build", [cmake, "--build", str(tmp / "build"), "-j", jobs])]
        with open(log_path, "w") as log:
            for what, cmd in steps:
                log.write("$ " + " ".join(cmd) + "\n")
                log.flush()
                rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
                if rc != 0:
                    log.close()
                    keep = root / f"{key}.failed.log"
                    shutil.copyfile(log_path, keep)
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise NativeBuildError(f"native runner {what} failed (exit {rc}): {_tail(keep)}",
                                           f"full log in {keep}; check that cmake >= 3.19 and a C++17 "
                                           "compiler work and that executorch==1.5.1 is installed")
        if not (tmp / "build" / RUNNER_NAME).exists():
            shutil.rmtree(tmp, ignore_errors=True)
            raise NativeBuildError("the build finished without producing edgekit_runner", "report this bug")
        if dest.exists():
            trash = Path(tempfile.mkdtemp(prefix=f"{key}.old-", dir=root))
            os.rename(dest, trash / "d")
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, dest)
        return _result(dest, key, True, time.perf_counter() - t0)


def build_runner(force: bool = False) -> Path:
    """Build (or reuse) the native runner and return the executable's path.

    Raises NativeBuildError when the toolchain is missing or the build fails.
    Example: ``subprocess.run([build_runner(), "--help"])``.
    """
    return Path(build_runner_info(force).path)


def runner_path() -> Path:
    """The runner executable, built on first use."""
    return build_runner(False)


def kernels_lib_path() -> Path:
    """The ctypes-loadable CPU kernel library (plain C API), built on first use."""
    info = build_runner_info(False)
    if info.kernels_lib is None:
        raise NativeBuildError("the CPU kernel library was not built", "rebuild with edgekit build-runner --force")
    return Path(info.kernels_lib)


def kernels_et_lib_path() -> Path:
    """The ExecuTorch custom-op library (``edgekit::linear_w2.out``...), built on first use."""
    info = build_runner_info(False)
    if info.kernels_et_lib is None:
        raise NativeBuildError("the ExecuTorch kernel library was not built", "rebuild with edgekit build-runner --force")
    return Path(info.kernels_et_lib)


def _ids(ids: Iterable[int]) -> str:
    return ",".join(str(int(i)) for i in ids)


def _run(args: Sequence[str], timeout: float | None) -> dict:
    exe = runner_path()
    cmd = [str(exe), *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise InternalError(f"native runner timed out after {timeout:.0f} s",
                            "use a smaller generation or a larger timeout") from e
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
        line = lines[-1] if lines else (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        msg = line[len("error: "):] if line.startswith("error: ") else line
        msg, _, hint = msg.partition(" | hint: ")
        cls = _EXIT_ERRORS.get(p.returncode, InternalError)
        if p.returncode < 0:
            msg = f"native runner crashed (signal {-p.returncode}): {msg}"
            hint = "rerun edgekit_runner with --verbose and report it"
        raise cls(msg, hint)
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError as e:
        raise InternalError(f"native runner printed no JSON: {p.stdout[:200]!r}", "report this bug") from e


def _common(pte_path: str | os.PathLike, threads: int | None) -> list[str]:
    args = ["--model", os.fspath(pte_path)]
    if threads is not None:
        if threads < 0:
            raise UserError(f"threads {threads} is negative", "use 0 for the default or a positive count")
        args += ["--threads", str(threads)]
    return args


def program_info(pte_path: str | os.PathLike, threads: int | None = None, timeout: float | None = 120) -> dict:
    """Load a .pte in the runner and return its metadata: ``{"meta": {abi, max_seq_len,
    max_chunk, vocab_size, n_layers, bos_id, eos_id}, "threads", "load_ms", "peak_rss_mib"}``."""
    return _run([*_common(pte_path, threads), "--info"], timeout)


def generate_native(pte_path: str | os.PathLike, prompt_ids: Sequence[int], max_new_tokens: int,
                    stop_ids: Iterable[int] | None = None, threads: int | None = None,
                    timeout: float | None = 600, draft_pte: str | os.PathLike | None = None,
                    draft_k: int = 4) -> dict:
    """Greedy generation in the native runner.

    Args:
        pte_path: an edgekit ABI-1 program (.pte).
        prompt_ids: prompt token ids, written at cache slot 0 on (chunked prefill).
        max_new_tokens: at most this many new tokens.
        stop_ids: stop tokens (not emitted); None -> the program's ``get_eos_id()``; ``()`` -> none.
        threads: ExecuTorch/XNNPACK threadpool size; None -> the runtime's default.
        draft_pte: a draft program (e.g. a package's ``draft_ee{K}.pte`` or another package's
            ``model.pte`` with the same vocabulary): greedy chain speculative decoding with
            ``draft_k`` drafted tokens per target forward (``draft_k + 1 <= max_chunk``); the
            tokens are the same as without it.
    Returns:
        dict with ``tokens`` (new ids), ``stop_reason`` (eos|length|context), ``prompt_tokens``,
        ``new_tokens``, ``prefill_ms``, ``ttft_ms``, ``decode_ms`` (after the first token),
        ``prefill_tok_s``, ``decode_tok_s``, ``load_ms``, ``peak_rss_mib``, ``threads``, ``meta``;
        with a draft also ``steps`` (target verifications), ``tau`` (tokens per verification),
        ``draft_ms``, ``verify_ms``, ``draft_k``, ``draft_meta``.
    Raises:
        PackageError: missing/corrupt .pte or ABI mismatch. UserError: bad ids or prompt too long.
        NativeBuildError: the runner could not be built. InternalError: runtime failure.
    """
    prompt_ids = list(prompt_ids)
    if not prompt_ids:
        raise UserError("empty prompt", "pass at least one token id")
    args = [*_common(pte_path, threads), "--prompt-ids", _ids(prompt_ids),
            "--max-new-tokens", str(int(max_new_tokens))]
    if stop_ids is not None:
        stop = list(stop_ids)
        args += ["--stop-ids", _ids(stop) if stop else "none"]
    args += _draft_args(draft_pte, draft_k)
    return _run(args, timeout)


def _draft_args(draft_pte: str | os.PathLike | None, draft_k: int) -> list[str]:
    if draft_pte is None:
        return []
    if int(draft_k) < 1:
        raise UserError(f"draft_k {draft_k} < 1", "use a draft length of at least 1")
    return ["--draft", os.fspath(draft_pte), "--draft-k", str(int(draft_k))]


def bench_native(pte_path: str | os.PathLike, prompt_ids: Sequence[int], gen_len: int, reps: int,
                 threads: int | None = None, timeout: float | None = 600,
                 draft_pte: str | os.PathLike | None = None, draft_k: int = 4) -> dict:
    """Benchmark prefill and decode in the native runner: one uncounted warm-up, then ``reps``
    generations of exactly ``gen_len`` tokens (stop tokens ignored); with ``draft_pte`` each
    run is speculative (per-run ``steps``, ``tau``, ``draft_ms``, ``verify_ms``).

    Returns a dict with ``runs`` (per-rep prefill_ms, decode_ms, ttft_ms, prefill_tok_s,
    decode_tok_s), ``{median,min,max}`` summaries of each under the same keys, ``peak_rss_mib``,
    ``threads``, ``load_ms``, ``meta``. Raises like :func:`generate_native`.
    """
    prompt_ids = list(prompt_ids)
    if not prompt_ids:
        raise UserError("empty prompt", "pass at least one token id")
    if reps < 1:
        raise UserError(f"reps {reps} < 1", "use at least one repetition")
    args = [*_common(pte_path, threads), "--prompt-ids", _ids(prompt_ids),
            "--max-new-tokens", str(int(gen_len)), "--bench", str(int(reps))]
    args += _draft_args(draft_pte, draft_k)
    return _run(args, timeout)


__all__ = ["SUPPORTED_ABI", "NativeBuildError", "RunnerBuild", "bench_native", "build_runner",
           "build_runner_info", "build_key", "cache_root", "executorch_dir", "generate_native",
           "kernels_et_lib_path", "kernels_lib_path", "native_sources", "program_info", "runner_path"]
