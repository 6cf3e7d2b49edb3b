"""The loop through the Python API on the built-in default model (stories260K):
plan on a catalog device -> export -> verify -> generate from the package -> speculative chat.

    python examples/python_api.py [OUT_DIR]
"""

from __future__ import annotations

import sys

from edgekit.export.builder import export_package
from edgekit.export.verify import verify_package
from edgekit.models.load import default_model_path, load_model
from edgekit.plan import plan
from edgekit.runtime.package import load_package
from edgekit.runtime.session import ChatSession


def main(out: str = "out/example") -> None:
    model = default_model_path()
    p = plan(str(model), "raspberry-pi-5-8gb", budget_mb=512, draft="none")
    print("plan:", p.chosen.to_dict()["preset"])  # exported here in float; see export --plan
    export_package(model, out, formats="executorch", max_seq_len=256, force=True)
    rep = verify_package(out, source=model)
    print("verify:", "ok" if rep["ok"] else "FAILED")
    pkg = load_package(out)
    res = pkg.engine().generate(pkg.tokenizer.encode("Once upon a time"), max_new_tokens=32)
    print("package:", res.text)
    chat = ChatSession(lm=load_model(model), draft="early-exit:4", budget_mb=4)
    r = chat.turn("Once upon a time", 32)
    print(f"speculative (tau {r.tau:.2f}):", r.text)


if __name__ == "__main__":
    main(*sys.argv[1:])
