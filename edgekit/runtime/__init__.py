"""Generation engine and backends (eager, ExecuTorch, onnxruntime, native runner)."""

from edgekit.runtime.engine import Backend, EagerBackend, Engine, GenerationResult, SamplingConfig

__all__ = ["Backend", "EagerBackend", "Engine", "GenerationResult", "SamplingConfig"]
