"""Tokenizers behind one small interface: llama2.c's binary BPE and Hugging Face tokenizer.json.

Example::

    tok = Llama2cTokenizer.from_file("tok512.bin")
    ids = tok.encode("Once upon a time")   # [1, ...] with BOS
    tok.decode(ids) == "Once upon a time"
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Protocol

from edgekit.errors import ModelLoadError


class Tokenizer(Protocol):
    """What every part of edgekit needs from a tokenizer."""

    kind: str
    bos_id: int | None
    eos_ids: list[int]
    vocab_size: int

    def encode(self, text: str, bos: bool = True) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class Llama2cTokenizer:
    """llama2.c tokenizer: scores + pieces, greedy highest-score pair merging, byte fallback."""

    kind = "llama2c"

    def __init__(self, pieces: list[bytes], scores: list[float], bos_id: int = 1, eos_id: int = 2) -> None:
        self.pieces = pieces
        self.scores = scores
        self.bos_id = bos_id
        self.eos_ids = [eos_id]
        self.vocab_size = len(pieces)
        self.lookup = {p: i for i, p in enumerate(pieces)}
        # Byte-fallback tokens <0x00>..<0xFF>; in llama2.c vocabularies they sit at ids 3..258.
        self.byte_ids: dict[int, int] = {}
        for i, p in enumerate(pieces):
            if len(p) == 6 and p.startswith(b"<0x") and p.endswith(b">"):
                try:
                    self.byte_ids[int(p[3:5], 16)] = i
                except ValueError:
                    pass

    @classmethod
    def from_file(cls, path: str | Path, vocab_size: int | None = None) -> "Llama2cTokenizer":
        """Read a llama2.c ``tokenizer.bin``. ``vocab_size`` defaults to reading until EOF."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelLoadError(f"cannot read tokenizer {path}: {e.strerror}",
                                 "pass --tokenizer PATH to a llama2.c tokenizer .bin") from None
        pieces, scores, off = [], [], 4
        try:
            while off < len(data) and (vocab_size is None or len(pieces) < vocab_size):
                score, n = struct.unpack_from("<fi", data, off)
                off += 8
                if n < 0 or off + n > len(data):
                    raise struct.error("piece runs past end of file")
                pieces.append(data[off:off + n])
                scores.append(score)
                off += n
        except struct.error:
            raise ModelLoadError(f"tokenizer {path} is truncated or corrupt",
                                 "use the tokenizer .bin written with the checkpoint") from None
        if vocab_size is not None and len(pieces) != vocab_size:
            raise ModelLoadError(f"tokenizer {path} has {len(pieces)} tokens, model expects {vocab_size}",
                                 "pair the checkpoint with its own tokenizer")
        return cls(pieces, scores)

    def encode(self, text: str, bos: bool = True) -> list[int]:
        ids: list[int] = []
        if text:
            ids.append(self.lookup[b" "])  # llama2.c's dummy prefix
        for ch in text:
            b = ch.encode("utf-8")
            if b in self.lookup:
                ids.append(self.lookup[b])
            else:
                ids.extend(self.byte_ids[x] for x in b)
        while True:
            best, best_i, best_id = -1e10, -1, -1
            for i in range(len(ids) - 1):
                j = self.lookup.get(self.pieces[ids[i]] + self.pieces[ids[i + 1]])
                if j is not None and self.scores[j] > best:
                    best, best_i, best_id = self.scores[j], i, j
            if best_i < 0:
                break
            ids[best_i:best_i + 2] = [best_id]
        return ([self.bos_id] if bos else []) + ids

    def piece_bytes(self, i: int) -> bytes:
        p = self.pieces[i]
        if len(p) == 6 and p.startswith(b"<0x") and p.endswith(b">"):
            try:
                return bytes([int(p[3:5], 16)])
            except ValueError:
                return p
        return p

    def decode(self, ids: list[int]) -> str:
        out = bytearray()
        prev = None
        for i in ids:
            if i == self.bos_id or i in self.eos_ids:
                prev = i
                continue
            b = self.piece_bytes(i)
            # llama2.c strips the dummy-prefix space after BOS (and at the very start).
            if (prev is None or prev == self.bos_id) and not out and b.startswith(b" "):
                b = b[1:]
            out += b
            prev = i
        return out.decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` through the ``tokenizers`` library."""

    kind = "hf"

    def __init__(self, path: str | Path, bos_id: int | None, eos_ids: list[int], add_bos: bool) -> None:
        from tokenizers import Tokenizer as _Tok

        try:
            self.tok = _Tok.from_file(str(path))
        except Exception as e:  # tokenizers raises a plain Exception on bad JSON
            raise ModelLoadError(f"cannot read {path}: {str(e).splitlines()[0]}",
                                 "the checkpoint needs a valid tokenizer.json") from None
        self.path = Path(path)
        self.bos_id = bos_id
        self.eos_ids = eos_ids
        self.add_bos = add_bos and bos_id is not None
        self.vocab_size = self.tok.get_vocab_size()

    @classmethod
    def from_dir(cls, d: Path, config: dict) -> "HFTokenizer":
        """Build from a checkpoint directory; BOS/EOS from tokenizer_config.json, then config.json."""
        tc = {}
        if (d / "tokenizer_config.json").exists():
            tc = json.loads((d / "tokenizer_config.json").read_text())
        from tokenizers import Tokenizer as _Tok

        raw = _Tok.from_file(str(d / "tokenizer.json")) if (d / "tokenizer.json").exists() else None

        def tok_id(name: str) -> int | None:
            v = tc.get(name)
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str) and raw is not None:
                return raw.token_to_id(v)
            return None

        bos = tok_id("bos_token")
        if bos is None:
            bos = config.get("bos_token_id")
        eos = config.get("eos_token_id")
        eos_ids = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        e2 = tok_id("eos_token")
        if e2 is not None and e2 not in eos_ids:
            eos_ids.append(e2)
        add_bos = bool(tc.get("add_bos_token", False))
        return cls(d / "tokenizer.json", bos, eos_ids, add_bos)

    def encode(self, text: str, bos: bool = True) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos and self.add_bos else []) + ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


class StreamDecoder:
    """Turns a growing token list into text deltas, holding back incomplete UTF-8 sequences."""

    def __init__(self, tok: Tokenizer, prompt_ids: list[int] | None = None) -> None:
        self.tok = tok
        self.ids: list[int] = list(prompt_ids or [])
        self.emitted = tok.decode(self.ids)

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        delta = text[len(self.emitted):] if text.startswith(self.emitted) else text
        self.emitted = text
        return delta
