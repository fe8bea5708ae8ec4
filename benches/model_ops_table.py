#!/usr/bin/env python3
"""Markdown table of ours vs PyTorch from one GPU run of the model-op benchmarks.

    python3 benches/model_ops_table.py bench-model_ops.log torch_model_ops.log

The first file is the criterion output of `benches/benches/model_ops.rs` (median of the
`time: [lo median hi]` line), the second the output of `benches/torch_model_ops.py`
(`name  ms` lines). Our kernel `gemm` (exact f32) is compared with PyTorch's `fp32`
(cuDNN with TF32 off); `tf32` and `bf16` with the same names, and `cubek` (cubek's
TF32 kernels) with PyTorch's `tf32`. Ratio = ours / PyTorch
(below 1 is faster than PyTorch).
"""
import re
import sys

UNIT_MS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}


def ours(path):
    times, name = {}, None
    for line in open(path, encoding="utf-8"):
        m = re.match(r"^((?:conv3d|norm|reduce|layout)/\S+)", line)
        if m and not line.startswith("Benchmarking"):
            name = m.group(1)
        t = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
        if t and name:
            times[name] = float(t.group(1)) * UNIT_MS[t.group(2)]
            name = None
    return times


def torch(path):
    times = {}
    for line in open(path, encoding="utf-8"):
        parts = line.split()
        if len(parts) == 3 and parts[2] == "ms":
            times[parts[0]] = float(parts[1])
    return times


def torch_name(name):
    return name.replace("/gemm_", "/fp32_").replace("/cubek_", "/tf32_")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a, b = ours(sys.argv[1]), torch(sys.argv[2])
    if not a or not b:
        sys.exit(f"no timings found ({len(a)} ours, {len(b)} PyTorch): wrong files?")
    print("| case | ssm | PyTorch | ratio |")
    print("| --- | --- | --- | --- |")
    for name, ms in a.items():
        ref = b.get(torch_name(name))
        if ref is None:
            print(f"| {name} | {ms:.3f} ms | (not run) | |")
        else:
            print(f"| {name} | {ms:.3f} ms | {ref:.3f} ms | {ms / ref:.2f} |")


if __name__ == "__main__":
    main()
