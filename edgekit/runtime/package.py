"""Open an exported package: checksums first, then tokenizer and backends.

Example::

    pkg = load_package("out/stories")          # raises PackageError if any file is damaged
    eng = pkg.engine("executorch", threads=2)
    print(eng.generate(pkg.tokenizer.encode("Once upon a time"), 32).text)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import PackageError, UserError
from edgekit.export.package import read_manifest, require_files
from edgekit.models.config import ModelArgs

BACKENDS = ("executorch", "onnx")


@dataclass
class Package:
    dir: Path
    manifest: dict[str, Any]
    tokenizer: Any
    args: ModelArgs

    @property
    def kinds(self) -> list[str]:
        """Programs the package holds, in preference order (executorch first)."""
        return [k for k in BACKENDS if k in self.manifest["programs"]]

    def program_path(self, kind: str) -> Path:
        if kind not in self.manifest["programs"]:
            raise UserError(f"package {self.dir} has no {kind} program (it has {', '.join(self.kinds) or 'none'})",
                            f"re-export with --format {kind} or --format both")
        return self.dir / self.manifest["programs"][kind]["file"]

    def weight_bytes(self, kind: str | None = None) -> int:
        """Weight bytes one decode step reads (manifest ``weight_bytes``: unique parameters, a tied
        embedding once). Older manifests fall back to the program's file size, which counts a tied
        embedding twice (the .pte keeps the lookup table and the packed head separately)."""
        if "weight_bytes" in self.manifest:
            return int(self.manifest["weight_bytes"])
        return int(self.manifest["programs"][kind or self.kinds[0]]["size"])

    def backend(self, kind: str | None = None, threads: int | None = None):
        """A fresh backend (with its own KV cache) over the ``kind`` program (default: first)."""
        from edgekit.runtime.backends import ExecuTorchBackend, OnnxBackend

        kind = kind or (self.kinds[0] if self.kinds else "executorch")
        if kind not in BACKENDS:
            raise UserError(f"unknown backend {kind!r}", "use executorch or onnx")
        path = self.program_path(kind)
        if kind == "executorch":
            needs = bool(self.manifest["programs"]["executorch"].get("custom_ops"))
            return ExecuTorchBackend(path, threads=threads, custom_ops=needs)
        return OnnxBackend(path, self.args.n_layers, self.manifest["max_seq_len"], self.args.vocab_size,
                           max_chunk=self.manifest["max_chunk"], threads=threads)

    @property
    def drafts(self) -> dict[str, Any]:
        """Draft programs written with the package (manifest ``drafts``), e.g. ``early-exit:2``."""
        return dict(self.manifest.get("drafts") or {})

    def draft_backend(self, name: str, kind: str | None = None, threads: int | None = None):
        """A fresh backend over the draft program ``name`` (e.g. ``early-exit:2``), with its own
        KV cache. Raises ``UserError`` when the package has no such draft or not in ``kind``."""
        from edgekit.runtime.backends import ExecuTorchBackend, OnnxBackend

        d = self.drafts.get(name)
        if d is None:
            have = ", ".join(self.drafts) or "none"
            k = name.partition(":")[2] or "K"
            raise UserError(f"package {self.dir} has no {name} draft program (drafts: {have})",
                            f"re-export with `edgekit export ... --draft-exit {k}`")
        kind = kind or (self.kinds[0] if self.kinds else "executorch")
        prog = d.get("programs", {}).get(kind)
        if prog is None:
            raise UserError(f"package {self.dir} has no {kind} program for the {name} draft "
                            f"(it has {', '.join(d.get('programs', {})) or 'none'})",
                            "use another --backend or re-export with --format both")
        path = self.dir / prog["file"]
        if kind == "executorch":
            return ExecuTorchBackend(path, threads=threads, custom_ops=bool(prog.get("custom_ops")))
        return OnnxBackend(path, int(d["n_layers"]), self.manifest["max_seq_len"], self.args.vocab_size,
                           max_chunk=self.manifest["max_chunk"], threads=threads)

    def draft_path(self, name: str) -> Path:
        """The ExecuTorch file of draft ``name`` (for the native runner)."""
        d = self.drafts.get(name)
        if d is None or "executorch" not in d.get("programs", {}):
            k = name.partition(":")[2] or "K"
            raise UserError(f"package {self.dir} has no ExecuTorch {name} draft program",
                            f"re-export with `edgekit export ... --draft-exit {k}`")
        return self.dir / d["programs"]["executorch"]["file"]

    def engine(self, kind: str | None = None, threads: int | None = None):
        from edgekit.runtime.engine import Engine

        return Engine(self.backend(kind, threads), self.tokenizer,
                      stop_ids=self.manifest.get("generation", {}).get("stop_ids", self.tokenizer.eos_ids))


def load_tokenizer(pkg: Path, info: dict[str, Any]):
    from edgekit.models.tokenizer import HFTokenizer, Llama2cTokenizer

    path = pkg / info["file"]
    if info["kind"] == "llama2c":
        tok = Llama2cTokenizer.from_file(path, info["vocab_size"])
        tok.bos_id = info["bos_id"]
        tok.eos_ids = list(info["eos_ids"])
        return tok
    if info["kind"] == "hf":
        return HFTokenizer(path, info["bos_id"], list(info["eos_ids"]), bool(info.get("add_bos", False)))
    raise PackageError(f"{pkg / 'manifest.json'}: unknown tokenizer kind {info['kind']!r}",
                       "re-export with this edgekit version")


def load_package(pkg: str | Path, check: bool = True) -> Package:
    """Read the manifest, check every file's size and sha256 (unless ``check=False``), load the
    tokenizer. Raises ``PackageError`` naming the first damaged file."""
    pkg = Path(pkg)
    m = read_manifest(pkg)
    if check:
        require_files(pkg, m)
    args = ModelArgs.from_dict(m["config"])
    return Package(pkg, m, load_tokenizer(pkg, m["tokenizer"]), args)
