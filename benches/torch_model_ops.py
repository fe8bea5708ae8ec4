#!/usr/bin/env python3
"""PyTorch (cuDNN) timings of the shapes in benches/benches/model_ops.rs.

Prints one line per case: `name  ms` with the same names as the criterion benchmarks
(`conv3d/<shape>/<kernel>_<layout>/<pass>`, `norm/<op>/<pass>`; `reduce/<case>/<n>`, `layout/<case>/<n>` of
`benches/benches/primitives.rs`). Times are the median of
CUDA-event timings over repeated batches after a warm-up. Kernels:

- `fp32`: torch.backends.cudnn.allow_tf32 = False (exact f32, compare with our `gemm`);
- `tf32`: allow_tf32 = True (PyTorch's default for convolutions; compare with our `tf32`);
- `bf16`: bf16 operands, f32 accumulation inside cuDNN, bf16 results (compare with our
  `bf16`, which returns f32 results).

Layouts: `cf` = contiguous NCDHW, `cl` = torch.channels_last_3d.
"""
import sys
import time

import torch
import torch.nn.functional as F


def bench(fn, min_time=0.3, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    # Batch size so one batch takes ~min_time/5.
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    one = max(time.perf_counter() - start, 1e-5)
    reps = max(1, int(min_time / 5 / one))
    samples = []
    for _ in range(5):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        torch.cuda.synchronize()
        samples.append(a.elapsed_time(b) / reps)
    samples.sort()
    return samples[len(samples) // 2]


def conv_cases():
    shapes = [(2, 48, 112, 112, 32), (2, 96, 56, 56, 16), (2, 192, 28, 28, 8)]
    for (n, c, h, w, d) in shapes:
        name = f"{n}x{c}x{h}x{w}x{d}"
        for kernel in ["fp32", "tf32", "bf16"]:
            for layout in ["cf", "cl"]:
                torch.backends.cudnn.allow_tf32 = kernel == "tf32"
                dtype = torch.bfloat16 if kernel == "bf16" else torch.float32
                fmt = torch.channels_last_3d if layout == "cl" else torch.contiguous_format
                x = torch.randn(n, c, h, w, d, device="cuda", dtype=dtype).to(memory_format=fmt)
                wt = (torch.randn(c, c, 3, 3, 3, device="cuda", dtype=dtype) * 0.05).to(memory_format=fmt)
                y = F.conv3d(x, wt, padding=1)
                dy = torch.randn_like(y)
                tag = f"conv3d/{name}/{kernel}_{layout}"
                yield f"{tag}/fwd", lambda: F.conv3d(x, wt, padding=1)
                args = (dy, x, wt, None, [1, 1, 1], [1, 1, 1], [1, 1, 1], False, [0, 0, 0], 1)
                yield f"{tag}/bwd_data", lambda: torch.ops.aten.convolution_backward(*args, [True, False, False])
                yield f"{tag}/bwd_weight", lambda: torch.ops.aten.convolution_backward(*args, [False, True, False])
                yield f"{tag}/bwd", lambda: torch.ops.aten.convolution_backward(*args, [True, True, False])


def norm_cases():
    n, c, h, w, d = 2, 48, 112, 112, 32
    wt = torch.randn(c, device="cuda", requires_grad=True)
    bs = torch.randn(c, device="cuda", requires_grad=True)

    x_cl = torch.randn(n, h, w, d, c, device="cuda", requires_grad=True)
    dy_cl = torch.randn_like(x_cl)
    yield "norm/ln_cl/fwd", lambda: F.layer_norm(x_cl, (c,), wt, bs, 1e-5)
    y = F.layer_norm(x_cl, (c,), wt, bs, 1e-5)
    yield "norm/ln_cl/bwd", lambda: torch.autograd.grad(y, (x_cl, wt, bs), dy_cl, retain_graph=True)

    # Channels-first LayerNorm as written in ConvNeXt / timm (LayerNorm "channels_first").
    x_cf = torch.randn(n, c, h, w, d, device="cuda", requires_grad=True)
    dy_cf = torch.randn_like(x_cf)

    def ln_cf():
        u = x_cf.mean(1, keepdim=True)
        s = (x_cf - u).pow(2).mean(1, keepdim=True)
        z = (x_cf - u) / torch.sqrt(s + 1e-5)
        return wt[:, None, None, None] * z + bs[:, None, None, None]

    yield "norm/ln_cf/fwd", ln_cf
    y = ln_cf()
    yield "norm/ln_cf/bwd", lambda: torch.autograd.grad(y, (x_cf, wt, bs), dy_cf, retain_graph=True)

    # The same via permute → layer_norm → permute (another common idiom).
    def ln_cf_permute():
        return F.layer_norm(x_cf.permute(0, 2, 3, 4, 1), (c,), wt, bs, 1e-5).permute(0, 4, 1, 2, 3)

    yield "norm/ln_cf_permute/fwd", ln_cf_permute
    y = ln_cf_permute()
    yield "norm/ln_cf_permute/bwd", lambda: torch.autograd.grad(y, (x_cf, wt, bs), dy_cf, retain_graph=True)

    yield "norm/in_cf/fwd", lambda: F.instance_norm(x_cf, eps=1e-5)
    y = F.instance_norm(x_cf, eps=1e-5)
    yield "norm/in_cf/bwd", lambda: torch.autograd.grad(y, (x_cf,), dy_cf, retain_graph=True)

    x_cl3 = torch.randn(n, c, h, w, d, device="cuda").to(memory_format=torch.channels_last_3d).requires_grad_()
    dy_cl3 = torch.randn_like(x_cl3)
    yield "norm/in_cl/fwd", lambda: F.instance_norm(x_cl3, eps=1e-5)
    y = F.instance_norm(x_cl3, eps=1e-5)
    yield "norm/in_cl/bwd", lambda: torch.autograd.grad(y, (x_cl3,), dy_cl3, retain_graph=True)


def reduce_cases():
    # The f32 sums of `benches/benches/primitives.rs` (`reduce/*`): over the rows of the
    # channels-last (2, 96, 56, 56, 16) activation, over each row, and over batch and space
    # of the channels-first layout.
    rows, c = 2 * 56 * 56 * 16, 96
    x = torch.randn(rows, c, device="cuda")
    cf = torch.randn(2, c, rows // 2, device="cuda")
    n = rows * c
    yield f"reduce/rows/{n}", lambda: x.sum(0)
    yield f"reduce/row_each/{n}", lambda: x.sum(1)
    yield f"reduce/cf_bias/{n}", lambda: cf.sum((0, 2))


def layout_cases():
    # The channels-first -> channels-last copies of `benches/benches/primitives.rs`
    # (`layout/*`): the conv benchmark activations, f32 at 192 channels and bf16 at 96.
    for (n, c, d, h, w), dtype, name in (((2, 192, 8, 28, 28), torch.float32, "f32"),
                                         ((2, 96, 16, 56, 56), torch.bfloat16, "bf16")):
        x = torch.randn(n, c, d, h, w, device="cuda").to(dtype)
        yield f"layout/cf_to_cl_{name}/{x.numel()}", lambda x=x: x.permute(0, 2, 3, 4, 1).contiguous()


def main():
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        sys.exit(1)
    print(f"# torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}")
    torch.backends.cudnn.benchmark = True
    # Optional filters: run the cases whose name contains any of them.
    only = sys.argv[1:]
    for gen in (conv_cases, norm_cases, reduce_cases, layout_cases):
        for name, fn in gen():
            if only and not any(f in name for f in only):
                continue
            try:
                ms = bench(fn)
                print(f"{name:48s} {ms:9.4f} ms", flush=True)
            except Exception as e:  # noqa: BLE001 - report and continue
                print(f"{name:48s} failed: {e}", flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
