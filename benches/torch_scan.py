"""The unfused selective-scan pipeline a PyTorch user would write, at the shapes of
benches/benches/scan.rs, for a side-by-side column on the GPU machine.

Pipeline per path: permute/flip copies of u, delta, B, C into the path's order
(cross-scan), a vectorised scan (log-space associative scan with torch.logcumsumexp,
Heinsen 2023, split into positive and negative parts of B*delta*u), the output
y = C.h + D.u, and the merge (inverse permutation of each path's output, summed).
Backward is autograd. Times are CUDA-event medians after warm-up.

    python3 benches/torch_scan.py            # all shapes
    python3 benches/torch_scan.py srma_view  # shapes whose name contains the filter
"""
import sys
import torch
import torch.nn.functional as F

dev = "cuda"
torch.backends.cuda.matmul.allow_tf32 = False


def path_index(grid, order, flip_all):
    """Canonical index of every step of a path (axis order slowest->fastest, optional reversal)."""
    idx = torch.arange(int(torch.tensor(grid).prod()), device=dev).reshape(grid)
    idx = idx.permute(*order).reshape(-1)
    return idx.flip(0) if flip_all else idx


def presets(kind, grid):
    if kind == "forward":
        return [path_index(grid, [0], False)]
    if kind == "cross2d":
        return [path_index(grid, [0, 1], False), path_index(grid, [1, 0], False),
                path_index(grid, [0, 1], True), path_index(grid, [1, 0], True)]
    if kind == "abss":
        out = []
        for row, col in [([0], [1, 2]), ([1], [0, 2]), ([2], [0, 1])]:
            a, b = path_index(grid, row + col, False), path_index(grid, col + row, False)
            out += [a, b, a.flip(0), b.flip(0)]
        return out
    raise ValueError(kind)


def scan_logspace(dt, A, Bu_dt, C):
    """h_t = exp(dt*A) h_{t-1} + Bu_dt; y_t = sum_n C h. Shapes (b, d, l, n) except C."""
    log_a = dt.unsqueeze(-1) * A  # (b, d, l, n), <= 0
    a_star = torch.cumsum(log_a, dim=2)
    pos = torch.clamp(Bu_dt, min=0)
    neg = torch.clamp(-Bu_dt, min=0)
    tiny = 1e-30
    lp = torch.logcumsumexp(torch.log(pos + tiny) - a_star, dim=2)
    ln = torch.logcumsumexp(torch.log(neg + tiny) - a_star, dim=2)
    h = torch.exp(a_star + lp) - torch.exp(a_star + ln)
    return (h * C).sum(-1)


def pipeline(u, delta, A, B, C, D, bias, z, paths, per_path_delta):
    b, d, l = u.shape
    out = torch.zeros_like(u)
    for k, idx in enumerate(paths):
        uk = u[:, :, idx]                                   # cross-scan copies
        dk = (delta[:, k] if per_path_delta else delta)[:, :, idx]
        Bk = B[:, k, 0][:, :, idx].permute(0, 2, 1)         # (b, l, n)
        Ck = C[:, k, 0][:, :, idx].permute(0, 2, 1)
        dt = F.softplus(dk + bias[k][None, :, None])
        bu = dt.unsqueeze(-1) * Bk.unsqueeze(1) * uk.unsqueeze(-1)
        y = scan_logspace(dt, A[k][None, :, None, :], bu, Ck.unsqueeze(1)) + D[k][None, :, None] * uk
        inv = torch.empty_like(idx)
        inv[idx] = torch.arange(l, device=dev)
        out = out + y[:, :, inv]                            # merge
    return out * F.silu(z) if z is not None else out


SHAPES = [
    ("mamba1d_8x1536x2048_n16", 8, 1536, 16, [2048], "forward", True, False),
    ("mamba1d_1x4096x65536_n16", 1, 4096, 16, [65536], "forward", True, False),
    ("srma_view_k4_2x96x112x3584_n1", 2, 96, 1, [112, 3584], "cross2d", False, True),
    ("srma_abss_k12_2x96x112x112x32_n1", 2, 96, 1, [112, 112, 32], "abss", False, True),
]


def timed(fn, reps=5):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return sorted(times)[len(times) // 2]


def self_check():
    """The log-space scan against a plain loop on a small problem."""
    g = torch.Generator(device=dev).manual_seed(1)
    dt = torch.rand(1, 2, 64, device=dev, generator=g) * 0.5
    A = -torch.rand(1, 2, 1, 4, device=dev, generator=g)
    bu = torch.randn(1, 2, 64, 4, device=dev, generator=g)
    C = torch.randn(1, 1, 64, 4, device=dev, generator=g)
    y = scan_logspace(dt, A, bu, C)
    h = torch.zeros(1, 2, 4, device=dev)
    ref = []
    for t in range(64):
        h = torch.exp(dt[:, :, t, None] * A[:, :, 0]) * h + bu[:, :, t]
        ref.append((h * C[:, 0, t]).sum(-1))
    ref = torch.stack(ref, dim=2)
    err = ((y - ref).norm() / ref.norm()).item()
    print(f"self-check: log-space scan vs loop, relative error {err:.2e}")


def main():
    flt = sys.argv[1] if len(sys.argv) > 1 else ""
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    self_check()
    for name, b, d, n, grid, kind, gate, ppd in SHAPES:
        if flt not in name:
            continue
        l = int(torch.tensor(grid).prod())
        paths = presets(kind, grid)
        k = len(paths)
        g = torch.Generator(device=dev).manual_seed(0)
        r = lambda *s, lo=-1.0, hi=1.0: (torch.rand(*s, device=dev, generator=g) * (hi - lo) + lo)
        u = r(b, d, l).requires_grad_()
        delta = (r(b, k, d, l, lo=-4.0, hi=-1.0) if ppd else r(b, d, l, lo=-4.0, hi=-1.0)).requires_grad_()
        A = r(k, d, n, lo=-2.0, hi=-0.1).requires_grad_()
        B = r(b, k, 1, n, l).requires_grad_()
        C = r(b, k, 1, n, l).requires_grad_()
        D = r(k, d).requires_grad_()
        bias = r(k, d, lo=-1.0, hi=0.0).requires_grad_()
        z = r(b, d, l).requires_grad_() if gate else None
        args = (u, delta, A, B, C, D, bias, z, paths, ppd)
        try:
            with torch.no_grad():
                fwd = timed(lambda: pipeline(*args))
        except torch.OutOfMemoryError:
            fwd = float("nan")
        torch.cuda.empty_cache()
        try:
            def fb():
                out = pipeline(*args)
                out.backward(torch.ones_like(out))
            fwd_bwd = timed(fb, reps=3)
        except torch.OutOfMemoryError:
            fwd_bwd = float("nan")
        torch.cuda.empty_cache()
        print(f"TORCH {name}: fwd {fwd:.3f} ms, fwd+bwd {fwd_bwd:.3f} ms (nan = out of memory)")


if __name__ == "__main__":
    main()
