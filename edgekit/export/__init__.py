"""Export to ExecuTorch (.pte, XNNPACK) and ONNX packages; verification against golden outputs.

Heavy toolchains (executorch, onnx) are imported lazily by the functions that need them.
"""

from __future__ import annotations

from typing import Any


def export_package(*args: Any, **kwargs: Any) -> dict:
    """See ``edgekit.export.builder.export_package``."""
    from edgekit.export.builder import export_package as _export

    return _export(*args, **kwargs)


def verify_package(*args: Any, **kwargs: Any) -> dict:
    """See ``edgekit.export.verify.verify_package``."""
    from edgekit.export.verify import verify_package as _verify

    return _verify(*args, **kwargs)


__all__ = ["export_package", "verify_package"]
