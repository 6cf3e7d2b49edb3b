"""Packages shared by the export / verify / runtime tests: each is exported once per session
(exports take tens of seconds), into a temp dir removed at exit. Tests that damage a package
copy it first (``copy_package``)."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

_ROOT = Path(tempfile.mkdtemp(prefix="edgekit-export-tests-"))
atexit.register(shutil.rmtree, _ROOT, True)
_CACHE: dict[str, Path] = {}
STORIES_SEQ = 128


def stories_package(stories_dir: Path) -> Path:
    """stories260K exported through the CLI (both formats, max_seq_len 128, max_chunk 32)."""
    from conftest import run_cli

    if "stories" not in _CACHE:
        out = _ROOT / "stories"
        p = run_cli("export", str(stories_dir), "--out", str(out), "--format", "both",
                    "--max-seq-len", str(STORIES_SEQ), "--max-chunk", "32", "--json")
        assert p.returncode == 0, p.stderr[-3000:]
        m = json.loads(p.stdout)
        assert m["schema_version"] == 1
        _CACHE["stories"] = out
    return _CACHE["stories"]


def tiny_package(name: str, ckpt: Path) -> Path:
    """A random tiny HF checkpoint exported through the library (both formats, max_seq_len 64,
    max_chunk 8); the output dir pre-exists with a junk file, so --force replacing it is tested."""
    from edgekit.export.builder import export_package

    if name not in _CACHE:
        out = _ROOT / name
        out.mkdir()
        (out / "junk.txt").write_text("old package")
        export_package(str(ckpt), out, formats="both", max_seq_len=64, max_chunk=8, force=True)
        _CACHE[name] = out
    return _CACHE[name]


def copy_package(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
