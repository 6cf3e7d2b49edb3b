"""SpecMemo benchmark: multi-turn chat, target-only vs naive speculation vs budget-managed.

(a) target-only greedy decoding;
(b) naive speculation: KV preallocated for the model's full context, a 64-node top-10 tree,
    logits kept for every node (draft and target);
(c) edgekit's managed setting with a budget of weights + 35% of (b)'s generation memory.

Each setting runs in a fresh process so peak RSS is its own. Generation memory is reported
twice: accounted (the memory model's terms for what the engine allocated) and measured (peak RSS
during the chat minus RSS before the first turn).

    python benchmarks/bench_specmemo.py            # both models, writes benchmarks/results/specmemo.*
    python benchmarks/bench_specmemo.py --models stories260K
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TURNS = ["Once upon a time", " Then the little dog", " The next day, Lily"]


def _load(model: str):
    import torch

    from edgekit.models.load import load_model

    if model == "stories260K":
        return load_model()
    from edgekit.models.config import SHAPES
    from edgekit.models.llama import Transformer
    from edgekit.models.load import LoadedModel, Source

    args = SHAPES[model]
    args.max_seq_len = 2048
    torch.manual_seed(0)
    m = Transformer(args).eval()
    with torch.no_grad():  # HF's init (std 0.02): random weights of the real shape
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    return LoadedModel(m, _IdsTokenizer(load_model().tokenizer, args.vocab_size), args, Source("random", "random"))


class _IdsTokenizer:
    """stories260K's encoder for prompts (ids < 512 fit any vocabulary); decodes ids as text
    of numbers, since a random model's tokens have no text."""

    kind = "ids"

    def __init__(self, tok, vocab_size: int) -> None:
        self.tok, self.bos_id, self.eos_ids, self.vocab_size = tok, tok.bos_id, [], vocab_size

    def encode(self, text: str, bos: bool = True) -> list[int]:
        return self.tok.encode(text, bos)

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


def run_setting(model: str, setting: str, budget_mb: float | None, k_exit: int, max_new: int) -> dict:
    """One setting in this process; returns tokens/s, tau, memory."""
    import psutil
    import torch

    from edgekit.runtime.session import ChatSession
    from edgekit.runtime.spec import SpecConfig

    torch.set_num_threads(2)
    lm = _load(model)
    if setting == "target":
        s = ChatSession(lm=lm, draft="none")
    elif setting == "naive":
        s = ChatSession(lm=lm, draft=f"early-exit:{k_exit}", spec=SpecConfig(tree=(10, 64), full_logits=True))
    else:
        s = ChatSession(lm=lm, budget_mb=budget_mb, draft=f"early-exit:{k_exit}")
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    new, t_dec, taus, toks = 0, 0.0, [], []
    for text in TURNS:
        r = s.turn(text, max_new)
        new += max(len(r.tokens) - 1, 0)
        t_dec += r.timings.decode_s
        taus.append(getattr(r, "tau", 1.0))
        toks.append(r.tokens)
    stop.set()
    th.join()
    rep = s.report()
    return {"model": model, "setting": setting, "budget_mb": budget_mb, "decode_tok_s": new / t_dec,
            "tau": sum(taus) / len(taus), "gen_bytes_accounted": rep["generation_bytes"],
            "gen_bytes_measured": peak[0] - base, "kv_rows": rep["kv_rows"], "spec": rep["spec"],
            "memory_terms": rep["memory"], "tokens": toks, "turns": rep["turns"]}


def _child(model, setting, budget, k, n):
    cmd = [sys.executable, __file__, "--child", model, setting, str(budget or 0), str(k), str(n)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["stories260K", "smollm2-135m"])
    ap.add_argument("--max-new", type=int, default=96)
    ap.add_argument("--child", nargs=5)
    a = ap.parse_args()
    if a.child:
        m, st, b, k, n = a.child
        print(json.dumps(run_setting(m, st, float(b) or None, int(k), int(n))))
        return
    exits = {"stories260K": 4, "smollm2-135m": 6}
    rows = []
    for model in a.models:
        k = exits.get(model, 2)
        ra = _child(model, "target", None, k, a.max_new)
        rb = _child(model, "naive", None, k, a.max_new)
        weights = rb["memory_terms"]["weights"]
        budget = (weights + 0.35 * rb["gen_bytes_accounted"]) / (1 << 20)
        rc = _child(model, "managed", budget, k, a.max_new)
        assert ra["tokens"] == rb["tokens"] == rc["tokens"], "speculation changed the greedy output"
        for r in (ra, rb, rc):
            r["vs_naive_tok_s"] = r["decode_tok_s"] / rb["decode_tok_s"]
            r["vs_naive_gen_mem"] = r["gen_bytes_accounted"] / rb["gen_bytes_accounted"]
            rows.append(r)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "specmemo.json").write_text(json.dumps(rows, indent=2))
    lines = ["| model | setting | decode tok/s | x naive | tau | gen mem accounted (MiB) | x naive | "
             "gen mem measured RSS (MiB) | KV rows | draft setting |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['setting']} | {r['decode_tok_s']:.1f} | {r['vs_naive_tok_s']:.2f} | "
                     f"{r['tau']:.2f} | {r['gen_bytes_accounted'] / 2**20:.2f} | {r['vs_naive_gen_mem']:.2f} | "
                     f"{r['gen_bytes_measured'] / 2**20:.1f} | {r['kv_rows']} | {r['spec']} |")
    (RESULTS / "specmemo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
