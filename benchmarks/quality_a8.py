"""What int8 activations (``--act-int8``, ``QuantConfig.act_bits = 8``) cost in quality.

stories260K (real weights), the same protocol as ``quality_table.py``: perplexity on the first
half of tinystories_val.txt, calibration windows from the second half. Each quantized model is
evaluated twice with the SAME packed weights: float activations, then int8 activations per weight
group (``set_act_bits(model, 8)``), so the difference is the activation rounding alone.

    python benchmarks/quality_a8.py            # writes benchmarks/results/quality_a8.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality_table import SHARED, log, stories_setup  # noqa: E402

from edgekit.models.load import load_model  # noqa: E402
from edgekit.quant import calibration_tokens, preset_config, quantize_  # noqa: E402
from edgekit.quant.modules import set_act_bits  # noqa: E402

CASES = [("w2g64", "decoupleq"), ("w2g64", "rtn"), ("w4g32", "rtn"), ("w8", "rtn")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-tokens", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = ap.parse_args()
    lm, calib_text, ppl = stories_setup(a.eval_tokens)
    tok = lm.tokenizer

    fp32 = ppl(lm.model)
    log(f"fp32 ppl {fp32:.4f}")
    calib = calibration_tokens(tok, calib_text, 64, 256, seed=0)
    rows = []
    for preset, method in CASES:
        m = load_model(SHARED / "models" / "stories260K").model
        quantize_(m, preset_config(preset, method=method, seed=0), calib)
        t = time.perf_counter()
        p_float = ppl(m)
        set_act_bits(m, 8)
        p_a8 = ppl(m)
        rows.append({"preset": preset, "method": method, "ppl_float_act": p_float, "ppl_int8_act": p_a8,
                     "a8_over_float": p_a8 / p_float, "ratio_to_fp32": p_a8 / fp32})
        log(f"{preset} {method}: float act {p_float:.3f}, int8 act {p_a8:.3f} (x{p_a8 / p_float:.4f}) "
            f"[{time.perf_counter() - t:.0f} s]")
    res = {"model": "stories260K", "fp32_ppl": fp32, "eval_tokens": a.eval_tokens, "rows": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "quality_a8.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# int8 activations vs float activations, stories260K ({a.eval_tokens} tokens of "
             f"tinystories_val first half; fp32 ppl {fp32:.3f})", "",
             "| preset | method | ppl, float activations | ppl, int8 activations | int8 / float | int8 / fp32 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['method']} | {r['ppl_float_act']:.3f} | {r['ppl_int8_act']:.3f} | "
                     f"{r['a8_over_float']:.4f} | {r['ratio_to_fp32']:.3f} |")
    (a.out / "quality_a8.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
