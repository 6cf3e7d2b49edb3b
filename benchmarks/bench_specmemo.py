"""SpecMemo benchmark: multi-turn chat, target-only vs naive speculation vs budget-managed.

(a) target-only greedy decoding;
(b) naive speculation: KV preallocated for the model's full context, a 64-node top-10 tree,
    logits kept for every node (draft and target);
(c) edgekit's managed setting with a budget of weights + 35% of (b)'s generation memory;
(d) the same budget with the prompt-lookup draft instead of the early exit (no draft model:
    drafts come from the conversation's own n-grams, so a draft costs a search, not a forward).

Each setting runs in a fresh process so peak RSS is its own. Generation memory is reported
twice: accounted (the memory model's terms for what the engine allocated) and measured (peak RSS
during the chat minus the RSS of the process holding its weights and a one-row KV cache). The
full-context caches of (a) and (b) are allocated after that baseline (torch.zeros writes them:
resident, as a static runtime cache is) and count in their measured number, as (c)'s counts
the cache it allocates turn by turn.

Acceptance on the SmolLM2-135M shape. Its weights are random (no hub here). The benchmark
measures the early-exit chain acceptance alpha (greedy, k = 4) of both models and reports them
side by side: the random model's (std-0.02 init) is not a real model's, its greedy continuation
is repetitive and its early exit agrees often; stories260K's is the real one. ``--match-alpha``
instead scales the residual outputs (wo, w2) of the random model's layers past the exit point
(``deep_scale``, searched) until its alpha matches stories260K's; ``--deep-scale S`` fixes it.
Costs (weights read per step, draft depth, the head) are the real shape's either way.

    python benchmarks/bench_specmemo.py            # both models, writes benchmarks/results/specmemo.*
    python benchmarks/bench_specmemo.py --models stories260K
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TURNS = ["Once upon a time", " Then the little dog", " The next day, Lily"]


def _load(model: str, deep_scale: float | None = None, k_exit: int = 6):
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
        if deep_scale is not None:  # layers past the exit add less: the early exit agrees more often
            for layer in m.layers[k_exit:]:
                layer.attention.wo.weight.mul_(deep_scale)
                layer.feed_forward.w2.weight.mul_(deep_scale)
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


def chain_alpha(tau: float, k: int) -> float:
    """Per-token acceptance alpha of a greedy chain of length k whose mean tokens per round is
    tau = (1 - alpha^(k+1)) / (1 - alpha) (bisection; tau counts the target's own token)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if sum(mid ** i for i in range(k + 1)) < tau:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def measure_alpha(model: str, k_exit: int, deep_scale: float | None, k: int = 4, max_new: int = 48) -> float:
    """Early-exit chain acceptance over the benchmark's turns."""
    import torch

    from edgekit.runtime.session import ChatSession
    from edgekit.runtime.spec import SpecConfig

    torch.set_num_threads(2)
    s = ChatSession(lm=_load(model, deep_scale, k_exit), draft=f"early-exit:{k_exit}", spec=SpecConfig(k=k))
    taus = [s.turn(text, max_new).tau for text in TURNS]
    return chain_alpha(sum(taus) / len(taus), k)


def calibrate_deep_scale(model: str, k_exit: int, alpha: float, steps: int = 7) -> tuple[float, float]:
    """Bisect the deep-layer scale until the model's early-exit alpha is within 0.03 of ``alpha``."""
    lo, hi = 0.0, 1.0  # assumes alpha falls as the deep layers' share grows (not guaranteed)
    best = (1.0, measure_alpha(model, k_exit, 1.0))
    for _ in range(steps):
        mid = (lo + hi) / 2
        a = measure_alpha(model, k_exit, mid)
        if abs(a - alpha) < abs(best[1] - alpha):
            best = (mid, a)
        if abs(a - alpha) < 0.03:
            break
        lo, hi = (mid, hi) if a > alpha else (lo, mid)
    return best


def run_setting(model: str, setting: str, budget_mb: float | None, k_exit: int, max_new: int,
                deep_scale: float | None = None) -> dict:
    """One setting in this process; returns tokens/s, tau, memory."""
    import psutil
    import torch

    from edgekit.runtime.session import ChatSession
    from edgekit.runtime.spec import SpecConfig

    torch.set_num_threads(2)
    lm = _load(model, deep_scale, k_exit)
    proc = psutil.Process()
    # The baseline is the process with its weights and no KV cache: a cache allocated at load
    # (torch.zeros writes it, so it is resident) would otherwise hide inside the baseline.
    lm.model.resize_cache(1)
    gc.collect()
    base = proc.memory_info().rss
    if not setting.startswith("managed"):  # preallocated for the model's full context, resident from here on
        lm.model.resize_cache(lm.args.max_seq_len)
    if setting == "target":
        s = ChatSession(lm=lm, draft="none")
    elif setting == "naive":
        s = ChatSession(lm=lm, draft=f"early-exit:{k_exit}", spec=SpecConfig(tree=(10, 64), full_logits=True))
    elif setting == "managed-lookup":
        s = ChatSession(lm=lm, budget_mb=budget_mb, draft="lookup")
    else:
        s = ChatSession(lm=lm, budget_mb=budget_mb, draft=f"early-exit:{k_exit}")
    peak = [proc.memory_info().rss]
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


def _child(model, setting, budget, k, n, deep_scale=None):
    cmd = [sys.executable, __file__, "--child", model, setting, str(budget or 0), str(k), str(n),
           str(-1.0 if deep_scale is None else deep_scale)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["stories260K", "smollm2-135m"])
    ap.add_argument("--max-new", type=int, default=96)
    ap.add_argument("--child", nargs=6)
    ap.add_argument("--deep-scale", type=float, nargs="+", default=[None],
                    help="scale the random model's layers past the exit by these (one run each; default: unscaled)")
    ap.add_argument("--match-alpha", action="store_true", help="search the deep-layer scale that gives the "
                    "random model stories260K's acceptance")
    a = ap.parse_args()
    if a.child:
        m, st, b, k, n, ds = a.child
        print(json.dumps(run_setting(m, st, float(b) or None, int(k), int(n), None if float(ds) < 0 else float(ds))))
        return
    exits = {"stories260K": 4, "smollm2-135m": 6}
    rows = []
    alpha_real = measure_alpha("stories260K", exits["stories260K"], None)
    print(f"stories260K early-exit:{exits['stories260K']} chain acceptance alpha {alpha_real:.3f}", file=sys.stderr)
    calib = {}
    runs = [(m, None) for m in a.models if m == "stories260K"]
    runs += [(m, ds) for m in a.models if m != "stories260K" for ds in ([None] if a.match_alpha else a.deep_scale)]
    for model, ds in runs:
        k = exits.get(model, 2)
        label = model
        if model != "stories260K":
            if a.match_alpha:
                ds, al = calibrate_deep_scale(model, k, alpha_real)
            else:
                al = measure_alpha(model, k, ds)
            label = f"{model} (alpha {al:.2f})"
            calib[label] = {"deep_scale": ds, "alpha": al, "alpha_stories260K": alpha_real}
            print(f"{model}: deep_scale {ds} -> early-exit alpha {al:.3f}", file=sys.stderr)
        ra = _child(model, "target", None, k, a.max_new, ds)
        rb = _child(model, "naive", None, k, a.max_new, ds)
        weights = rb["memory_terms"]["weights"]
        budget = (weights + 0.35 * rb["gen_bytes_accounted"]) / (1 << 20)
        rc = _child(model, "managed", budget, k, a.max_new, ds)
        rd = _child(model, "managed-lookup", budget, k, a.max_new, ds)
        assert ra["tokens"] == rb["tokens"] == rc["tokens"] == rd["tokens"], "speculation changed the greedy output"
        for r in (ra, rb, rc, rd):
            r["model"] = label
            r["vs_naive_tok_s"] = r["decode_tok_s"] / rb["decode_tok_s"]
            r["vs_naive_gen_mem"] = r["gen_bytes_accounted"] / rb["gen_bytes_accounted"]
            r["vs_naive_gen_mem_measured"] = r["gen_bytes_measured"] / rb["gen_bytes_measured"]
            r["vs_target_tok_s"] = r["decode_tok_s"] / ra["decode_tok_s"]
            rows.append(r)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "specmemo.json").write_text(json.dumps({"alpha_calibration": calib, "rows": rows}, indent=2))
    lines = ["| model | setting | decode tok/s | x naive | x target | tau | gen mem accounted (MiB) | x naive | "
             "gen mem measured RSS (MiB) | x naive | KV rows | draft setting per turn |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['setting']} | {r['decode_tok_s']:.1f} | {r['vs_naive_tok_s']:.2f} | "
                     f"{r['vs_target_tok_s']:.2f} | {r['tau']:.2f} | {r['gen_bytes_accounted'] / 2**20:.2f} | "
                     f"{r['vs_naive_gen_mem']:.2f} | {r['gen_bytes_measured'] / 2**20:.1f} | "
                     f"{r['vs_naive_gen_mem_measured']:.2f} | {r['kv_rows']} | "
                     + "; ".join(f"{t['spec']} ({t['tok_s'] or 0:.0f} tok/s)" for t in r["turns"]) + " |")
    lines += ["", f"Early-exit chain acceptance (k=4) on stories260K's real weights: alpha {alpha_real:.3f}."]
    for m, c in calib.items():
        lines.append(f"{m}: random weights, deep-layer scale {c['deep_scale']} (see the module docstring).")
    (RESULTS / "specmemo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
