"""The package directory: manifest schema, file checksums and atomic writing.

A package is a directory holding one or more programs (``model.pte`` for ExecuTorch,
``model.onnx`` + ``model.onnx.data`` for onnxruntime), the tokenizer file and ``manifest.json``.
The manifest lists every other file with its size and sha256, so a package can be checked
before anything in it is run (``check_files``).

Example::

    with atomic_dir("out/pkg", force=False) as tmp:   # build inside tmp
        (tmp / "model.pte").write_bytes(b"...")
        write_manifest(tmp, manifest)                 # fills manifest["files"]
    m = read_manifest("out/pkg"); check_files("out/pkg", m)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from edgekit.errors import PackageError, UserError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PTE_FILE = "model.pte"
ONNX_FILE = "model.onnx"
ONNX_DATA = "model.onnx.data"
EDGEKIT_ABI = 1  # version of the .pte calling convention (see edgekit/export/executorch.py)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entries(d: Path) -> dict[str, dict[str, Any]]:
    """``{relative name: {size, sha256}}`` for every file under ``d`` except the manifest."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(d).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def write_manifest(d: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Fill ``manifest["files"]`` from what is in ``d`` and write ``d/manifest.json``."""
    manifest["files"] = file_entries(d)
    (d / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(pkg: str | Path) -> dict[str, Any]:
    """Parse and schema-check ``pkg/manifest.json``.

    Raises ``PackageError`` naming the manifest when it is missing, not JSON, or of an unknown
    ``schema_version``.
    """
    pkg = Path(pkg)
    if not pkg.is_dir():
        raise PackageError(f"package {pkg} does not exist or is not a directory",
                           "pass a directory written by `edgekit export`")
    mpath = pkg / MANIFEST
    if not mpath.exists():
        raise PackageError(f"{mpath}: missing", "this is not an edgekit package; re-run `edgekit export`")
    try:
        m = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{mpath}: not valid JSON ({e})", "re-run `edgekit export`") from None
    if not isinstance(m, dict):
        raise PackageError(f"{mpath}: not a JSON object", "re-run `edgekit export`")
    v = m.get("schema_version")
    if v != SCHEMA_VERSION:
        raise PackageError(f"{mpath}: unknown schema_version {v!r} (this edgekit reads {SCHEMA_VERSION})",
                           "re-export the package with this edgekit version")
    for key in ("files", "programs", "config", "tokenizer", "max_seq_len", "max_chunk"):
        if key not in m:
            raise PackageError(f"{mpath}: field {key!r} missing", "re-run `edgekit export`")
    return m


def check_files(pkg: str | Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Check every file listed in the manifest (existence, size, sha256).

    Returns one row per file ``{file, ok, detail}``; raises nothing. Use ``require_files`` to
    raise on the first failure.
    """
    pkg = Path(pkg)
    rows = []
    for name, info in sorted(manifest["files"].items()):
        p = pkg / name
        if not p.is_file():
            rows.append({"file": name, "ok": False, "detail": "missing"})
        elif p.stat().st_size != info["size"]:
            rows.append({"file": name, "ok": False,
                         "detail": f"size {p.stat().st_size} != manifest {info['size']} (truncated?)"})
        elif sha256_file(p) != info["sha256"]:
            rows.append({"file": name, "ok": False, "detail": "sha256 mismatch (corrupt or modified)"})
        else:
            rows.append({"file": name, "ok": True, "detail": f"{info['size']} bytes, sha256 ok"})
    return rows


def require_files(pkg: str | Path, manifest: dict[str, Any]) -> None:
    """Raise ``PackageError`` naming the first file that is missing, truncated or corrupt."""
    for r in check_files(pkg, manifest):
        if not r["ok"]:
            raise PackageError(f"{Path(pkg) / r['file']}: {r['detail']}",
                               "the package is damaged; re-run `edgekit export` or re-copy it")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(out: Path) -> None:
    """Remove temp dirs left next to ``out`` by exports that were killed."""
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        try:
            pid = int(p.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def atomic_dir(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temp directory next to ``out``; on success it becomes ``out`` in one rename.

    An existing ``out`` raises ``UserError`` unless ``force``. If the body raises (or the process
    dies), nothing appears at ``out``: the temp dir is removed, or left as ``.NAME.tmp-PID-*``
    and cleaned by the next export.
    """
    out = Path(out).absolute()
    if out.exists() and not force:
        raise UserError(f"{out} already exists", "pass --force to overwrite it, or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    trash = None
    if out.exists():
        # rename(2) cannot replace a non-empty directory: move the old one aside first.
        trash = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(out, trash)
    os.replace(tmp, out)
    if trash is not None:
        if trash.is_dir():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink()
