"""Calibration data: token windows drawn reproducibly from a text file.

Example::

    toks = calibration_tokens(lm.tokenizer, Path("corpus.txt").read_text(), 64, 256, seed=0)
    toks.shape   # (64, 256) int64
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgekit.errors import UserError
from edgekit.eval.ppl import tokenize_corpus
from edgekit.models.tokenizer import Tokenizer


def read_calib_text(path: str | Path) -> str:
    """The text of a calibration file; UserError if missing, unreadable or empty."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"calibration file {p} does not exist", "pass a UTF-8 text file with --calib FILE")
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise UserError(f"cannot read calibration file {p}: {e.strerror}", "check the path and permissions") from None
    if not text.strip():
        raise UserError(f"calibration file {p} is empty", "pass a file with some text in it")
    return text


def calibration_tokens(tok: Tokenizer, text: str, n_samples: int, seq_len: int, seed: int = 0,
                       max_tokens: int | None = None) -> torch.Tensor:
    """``n_samples`` windows of ``seq_len`` tokens (n_samples, seq_len) int64 from ``text``.

    The text is tokenized as the perplexity evaluation does (BOS-separated documents, at most
    ``max_tokens``, default enough for non-overlapping windows x4); window starts are drawn
    uniformly with ``torch.Generator().manual_seed(seed)``. Raises UserError if the text has
    fewer than ``seq_len`` tokens.
    """
    if n_samples <= 0 or seq_len <= 1:
        raise UserError(f"bad calibration size {n_samples} x {seq_len}", "use --calib-samples >= 1 and --calib-seq-len >= 2")
    cap = max_tokens or max(4 * n_samples * seq_len, 8 * seq_len)
    ids = tokenize_corpus(tok, text, cap)
    if len(ids) < seq_len:
        raise UserError(f"calibration text has {len(ids)} tokens, fewer than --calib-seq-len {seq_len}",
                        "pass a longer file or a smaller --calib-seq-len")
    t = torch.tensor(ids, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len + 1, (n_samples,), generator=gen)
    return torch.stack([t[s:s + seq_len] for s in starts.tolist()])
