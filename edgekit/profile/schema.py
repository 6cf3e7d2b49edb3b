"""The device profile schema (version 1): what a device is, what it can do, and where each number
came from.

A profile is one JSON file. Every datasheet number is a :class:`Sourced` value (``{"value": ...,
"source": "..."}``) so a reader can check it; numbers edgekit measured itself live under
``measured`` with the method that produced them.

Units are in the field names: ``_gib`` capacities (2**30 bytes; RAM and VRAM chips are binary, so
a datasheet's "24 GB" card is 24 GiB), ``_gbps`` bandwidth in 10**9 bytes/s, ``_ghz`` clocks,
``_tflops`` / ``_tops`` 10**12 operations/s (dense, not the 2:4-sparse marketing figure),
``_gflops`` / ``_gops`` 10**9 operations/s (a multiply-add counts as two).

Example::

    from edgekit.profile import load_profile
    p = load_profile("device_profiles/raspberry-pi-5-8gb.json")
    p.identity.device_class, p.memory.app_usable_gib.value   # ("board", 7.2)
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1
GIB = 1 << 30

# "desktop" and "server" are GPU-less PCs and hosts (what `edgekit profile` finds on a CI VM).
DeviceClass = Literal["phone", "board", "laptop", "desktop", "desktop-gpu", "server", "server-gpu"]
DEVICE_CLASSES: tuple[str, ...] = ("phone", "board", "laptop", "desktop", "desktop-gpu", "server", "server-gpu")

# Execution backends a plan can target. CPU: xnnpack (ExecuTorch), onnxruntime (ORT CPU EP).
# GPU: vulkan, mps, cuda, rocm. NPU: qnn (Qualcomm HTP), coreml (Apple Neural Engine).
Backend = Literal["xnnpack", "onnxruntime", "vulkan", "mps", "cuda", "rocm", "qnn", "coreml"]
BACKENDS: tuple[str, ...] = ("xnnpack", "onnxruntime", "vulkan", "mps", "cuda", "rocm", "qnn", "coreml")

# ISA features the kernels and the planner care about (Linux /proc/cpuinfo names normalised).
ISA_FEATURES: frozenset[str] = frozenset({
    # x86
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
    # Arm
    "neon", "fp16", "dotprod", "i8mm", "bf16", "sve", "sve2", "sme", "sme2",
})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Sourced(_Strict):
    """A datasheet (or estimated) number with a note saying where it comes from."""

    value: float = Field(ge=0)
    source: str = Field(min_length=3, description="vendor page / datasheet / how it was estimated")


class Identity(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="slug used by --device")
    display_name: str
    device_class: DeviceClass = Field(alias="class")
    vendor: str
    soc: Optional[str] = Field(None, description="SoC (phones, boards) or CPU model (PCs, servers)")
    os: Optional[str] = None


class CpuCluster(_Strict):
    """Cores of one micro-architecture and clock (big.LITTLE clusters; one cluster on PCs)."""

    name: str
    cores: int = Field(ge=1)
    max_freq_ghz: Optional[Sourced] = None


class Cpu(_Strict):
    model: str
    arch: Literal["x86_64", "arm64", "armv7", "riscv64", "other"]
    clusters: list[CpuCluster] = Field(min_length=1)
    threads: Optional[int] = Field(None, ge=1, description="hardware threads when SMT")
    isa: list[str] = Field(default_factory=list)
    peak_fp32_gflops: Optional[Sourced] = None

    @field_validator("isa")
    @classmethod
    def _known_isa(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - ISA_FEATURES)
        if unknown:
            raise ValueError(f"unknown ISA feature(s) {unknown}; known: {sorted(ISA_FEATURES)}")
        return v

    @property
    def cores(self) -> int:
        return sum(c.cores for c in self.clusters)


class Caches(_Strict):
    l1d_kib: Optional[Sourced] = Field(None, description="per core (largest cluster)")
    l2_kib: Optional[Sourced] = Field(None, description="per core or per cluster, see source")
    llc_kib: Optional[Sourced] = Field(None, description="last-level cache shared by all cores (L3/SLC)")


class Memory(_Strict):
    total_gib: Sourced
    app_usable_gib: Sourced = Field(description="what one app can really allocate before the OS kills "
                                                "it (phones: far below total)")
    type: Optional[str] = Field(None, description="e.g. LPDDR5X-8533, 128-bit")
    bandwidth_gbps: Optional[Sourced] = Field(None, description="theoretical peak DRAM bandwidth")
    unified: bool = Field(False, description="CPU and GPU/NPU share this memory")

    @model_validator(mode="after")
    def _usable_le_total(self) -> "Memory":
        if self.app_usable_gib.value > self.total_gib.value:
            raise ValueError("app_usable_gib.value is larger than total_gib.value")
        return self


class Gpu(_Strict):
    name: str
    count: int = Field(1, ge=1, description="identical GPUs (a plan uses one)")
    memory_gib: Optional[Sourced] = Field(None, description="dedicated memory; None when unified")
    usable_memory_gib: Optional[Sourced] = Field(None, description="after driver/context reserve")
    bandwidth_gbps: Optional[Sourced] = None
    peak_fp32_tflops: Optional[Sourced] = None
    peak_fp16_tflops: Optional[Sourced] = Field(None, description="dense tensor/matrix fp16")
    peak_int8_tops: Optional[Sourced] = Field(None, description="dense int8")


class Npu(_Strict):
    name: str
    peak_int8_tops: Optional[Sourced] = None
    session_memory_limit_gib: Optional[Sourced] = Field(
        None, description="largest weights+buffers one NPU session/context can map")


class Accelerators(_Strict):
    gpus: list[Gpu] = Field(default_factory=list)
    npus: list[Npu] = Field(default_factory=list)


class BandwidthSample(_Strict):
    """One memory-bandwidth measurement (best of ``repeats``)."""

    kind: Literal["read", "copy"]
    threads: int = Field(ge=1)
    gbps: float = Field(ge=0)
    buffer_mib: int = Field(ge=1)
    repeats: int = Field(ge=1)
    device: Literal["cpu", "gpu"] = "cpu"


class ComputeSample(_Strict):
    """One matmul throughput measurement: ``gflops`` counts a multiply-add as 2 operations."""

    op: Literal["gemm", "gemv"]
    dtype: Literal["fp32", "fp16", "bf16", "int8"]
    threads: int = Field(ge=1)
    gflops: float = Field(ge=0)
    shape: list[int] = Field(min_length=3, max_length=3, description="M, N, K")
    repeats: int = Field(ge=1)
    device: Literal["cpu", "gpu"] = "cpu"


class Measured(_Strict):
    tool: str = Field(description="what measured, e.g. 'edgekit 0.1.0 profile --quick'")
    date: str
    method: str = Field(description="how: buffer sizes, best-of-N, libraries")
    bandwidth: list[BandwidthSample] = Field(default_factory=list)
    compute: list[ComputeSample] = Field(default_factory=list)

    def best_bandwidth_gbps(self, kind: str = "read", threads: int | None = None,
                            device: str = "cpu") -> float | None:
        """Highest measured bandwidth of ``kind``, at ``threads`` or fewer when given."""
        vals = [s.gbps for s in self.bandwidth
                if s.kind == kind and s.device == device and (threads is None or s.threads <= threads)]
        return max(vals) if vals else None

    def best_compute_gflops(self, op: str, dtype: str, threads: int | None = None,
                            device: str = "cpu") -> float | None:
        """Highest measured throughput of ``op``/``dtype``, at ``threads`` or fewer when given."""
        vals = [s.gflops for s in self.compute
                if s.op == op and s.dtype == dtype and s.device == device
                and (threads is None or s.threads <= threads)]
        return max(vals) if vals else None


class DeviceProfile(_Strict):
    """A whole device. ``schema_version`` must be 1."""

    schema_version: Literal[1] = SCHEMA_VERSION
    identity: Identity
    cpu: Cpu
    caches: Caches = Field(default_factory=Caches)
    memory: Memory
    accelerators: Accelerators = Field(default_factory=Accelerators)
    backends: list[Backend] = Field(min_length=1)
    measured: Optional[Measured] = None
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _backends_have_hardware(self) -> "DeviceProfile":
        gpu_backends = {"cuda", "rocm", "vulkan", "mps"} & set(self.backends)
        if gpu_backends and not self.accelerators.gpus:
            raise ValueError(f"backends {sorted(gpu_backends)} need an entry in accelerators.gpus")
        npu_backends = {"qnn", "coreml"} & set(self.backends)
        if npu_backends and not self.accelerators.npus:
            raise ValueError(f"backends {sorted(npu_backends)} need an entry in accelerators.npus")
        return self

    @property
    def name(self) -> str:
        return self.identity.name

    def app_usable_bytes(self) -> int:
        """Bytes one process may allocate in host memory."""
        return int(self.memory.app_usable_gib.value * GIB)

    def to_json_dict(self) -> dict:
        """The profile as it is written to disk (aliases, no unset optional noise)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
