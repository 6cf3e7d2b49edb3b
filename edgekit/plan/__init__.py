"""Planning under a memory budget: the memory model, the speed model and the planner.

Example::

    from edgekit.plan import plan, load_plan
    res = plan("llama-3.2-1b", "galaxy-s24", budget_mb=3072)
    res.chosen.label                  # e.g. 'w4g128/xnnpack/draft:self-quant:2/k3'
    res.write_plan("plan.json")
    load_plan("plan.json").preset
"""

from edgekit.plan.memory import (Draft, MemoryBreakdown, ModelShape, RuntimeSpec, WeightFormat,
                                 estimate_memory, kv_cache_bytes, matrix_bytes, weight_bytes)
from edgekit.plan.planner import PlanFile, PlanResult, load_plan, plan, resolve_model
from edgekit.plan.presets import PRESETS, QuantPreset, get_preset

__all__ = ["Draft", "MemoryBreakdown", "ModelShape", "PRESETS", "PlanFile", "PlanResult", "QuantPreset",
           "RuntimeSpec", "WeightFormat", "estimate_memory", "get_preset", "kv_cache_bytes", "load_plan",
           "matrix_bytes", "plan", "resolve_model", "weight_bytes"]
