"""Micro-comparison: XNNPACK 8da4w (torchao Int8DynActInt4WeightQuantizer, g32) vs edgekit::linear_w4 g32
vs fp32 XNNPACK on a stack of SmolLM2-135M FFN-shaped linears (M=1 decode), Python ET runtime, 2 threads.
Run: python benchmarks/bench_w4_xnnpack.py  (results of one run on the shared 2-core box, load ~8, in
benchmarks/results/w4_xnnpack.md)."""
import time, statistics, sys, torch, copy
from torch import nn
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
torch.manual_seed(0)
K, H, L = 576, 1536, 8
class Stack(nn.Module):
    def __init__(s):
        super().__init__()
        s.up = nn.ModuleList(nn.Linear(K, H, bias=False) for _ in range(L))
        s.down = nn.ModuleList(nn.Linear(H, K, bias=False) for _ in range(L))
    def forward(s, x):
        for u, d in zip(s.up, s.down):
            x = x + d(torch.relu(u(x)))
        return x
base = Stack().eval()
x = torch.randn(1, K)
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.exir import to_edge_transform_and_lower, EdgeCompileConfig
from executorch.runtime import Runtime
from edgekit.runtime.backends import set_executorch_threads
from edgekit.kernels.ops import load_et_kernels
load_et_kernels()
set_executorch_threads(2)
def build(m, name):
    ep = torch.export.export(m, (x,))
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()], compile_config=EdgeCompileConfig(_check_ir_validity=False))
    buf = edge.to_executorch().buffer
    p = f"/tmp/{name}.pte"; open(p, "wb").write(buf)
    return p, len(buf)
def bench(p):
    prog = Runtime.get().load_program(p); meth = prog.load_method("forward")
    for _ in range(20): meth.execute([x])
    ts = []
    for r in range(7):
        t = time.perf_counter()
        for _ in range(50): meth.execute([x])
        ts.append((time.perf_counter() - t) / 50)
    return statistics.median(ts), meth.execute([x])[0]
res = {}
ref = base(x)
p, sz = build(copy.deepcopy(base), "fp32"); t, y = bench(p); res["fp32 xnnpack"] = (t, sz, float((y-ref).abs().max()))
from torchao.quantization.quant_api import Int8DynActInt4WeightQuantizer
m8 = Int8DynActInt4WeightQuantizer(groupsize=32, precision=torch.float32).quantize(copy.deepcopy(base))
p, sz = build(m8, "8da4w"); t, y = bench(p); res["xnnpack 8da4w g32"] = (t, sz, float((y-ref).abs().max()))
from edgekit.quant.modules import PackedLinearW4
from edgekit.export.quant_lower import lowered_for_executorch
mq = copy.deepcopy(base)
for i in range(L):
    mq.up[i] = PackedLinearW4.from_float(base.up[i], 32); mq.down[i] = PackedLinearW4.from_float(base.down[i], 32)
with lowered_for_executorch(mq):
    p, sz = build(mq, "ekw4")
t, y = bench(p); res["edgekit::linear_w4 g32"] = (t, sz, float((y-ref).abs().max()))
for k, (t, sz, e) in res.items():
    print(f"{k:28s} {t*1e3:7.3f} ms/call  {sz/1e6:6.2f} MB  max|y-fp32| {e:.3f}")
