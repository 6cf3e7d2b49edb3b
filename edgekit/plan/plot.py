"""Plots for ``edgekit plan --plot``: the memory breakdown of the top configurations and the
roofline of the chosen backend with the chosen configuration's decode and prefill points."""

from __future__ import annotations

import os
from pathlib import Path

from edgekit.errors import UserError
from edgekit.plan.planner import PlanResult
from edgekit.plan.roofline import compute_dtype, forward_time

# Terms grouped into a few stacks so the bars stay readable.
GROUPS = [("weights", ("weights.",)), ("KV cache", ("kv_cache",)), ("speculation", ("spec.", "logits.draft",
                                                                                    "logits.verify")),
          ("logits", ("logits",)), ("activations", ("activations", "buffers")), ("runtime", ("runtime.",))]


def _grouped(terms: dict[str, int]) -> dict[str, int]:
    out = {g: 0 for g, _ in GROUPS}
    for k, v in terms.items():
        for g, prefixes in GROUPS:
            if k.startswith(prefixes):
                out[g] += v
                break
    return out


def plot_plan(res: PlanResult, path: str | os.PathLike, top: int = 6) -> Path:
    """Write a PNG with two panels: stacked memory bars (GiB) for the chosen and the next best
    configurations against the budget, and the chosen backend's roofline.

    Raises:
        UserError: the file cannot be written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cands = res.ranked[:top]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5.5))
    bottoms = [0.0] * len(cands)
    labels = [c.label.replace("/", "\n", 1) for c in cands]
    for g, _ in GROUPS:
        vals = [_grouped(c.memory.terms)[g] / 2**30 for c in cands]
        ax1.bar(range(len(cands)), vals, bottom=bottoms, label=g)
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    budget = res.chosen.budget / 2**30
    ax1.axhline(budget, color="red", linestyle="--", label=f"budget {budget:.2f} GiB")
    ax1.set_xticks(range(len(cands)), labels, rotation=30, ha="right", fontsize=7)
    ax1.set_ylabel("GiB")
    ax1.set_title(f"{res.shape.name} on {res.device.name}: memory at context {res.context}")
    ax1.legend(fontsize=8)

    c = res.chosen
    tgt = res.targets[c.backend]
    bw = tgt.bandwidth * tgt.info.eff_bw
    peak = tgt.compute[compute_dtype(c.fmt, tgt)] * tgt.info.eff_compute
    xs = [2 ** (i / 4) for i in range(-8, 60)]
    ax2.loglog(xs, [min(peak, bw * x) / 1e9 for x in xs], color="black", label=f"{c.backend} roofline")
    kv = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}[c.kv_dtype]
    points = [("decode (1 token)", 1, "o"), (f"verify ({c.draft.verify_tokens} tokens)", c.draft.verify_tokens, "s"),
              (f"prefill chunk ({res.prefill_chunk})", res.prefill_chunk, "^")]
    for name, T, marker in points:
        if name.startswith("verify") and c.draft.kind == "none":
            continue
        s = forward_time(res.shape, c.fmt, tgt, tokens=T, context=res.prompt_tokens, kv_bytes=kv)
        ai = s.flops / s.bytes
        ax2.loglog([ai], [s.flops / (s.seconds - s.t_overhead) / 1e9], marker, markersize=9, label=name)
    ax2.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax2.set_ylabel("attainable GFLOP/s")
    ax2.set_title(f"roofline: {bw / 1e9:.0f} GB/s x {peak / 1e12:.2f} TOPS ({compute_dtype(c.fmt, tgt)})")
    ax2.legend(fontsize=8)
    ax2.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    p = Path(path)
    try:
        fig.savefig(p, dpi=110)
    except OSError as e:
        raise UserError(f"cannot write {p}: {e.strerror}", "pass --plot to a writable .png path") from None
    finally:
        plt.close(fig)
    return p
