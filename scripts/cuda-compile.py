#!/usr/bin/env python3
"""Compile kernel sources dumped by the codegen target (SSM_CODEGEN_DUMP) as the GPU does,
NVRTC with CubeCL's options for sm_90a, then assemble the PTX with ptxas, which reports
what a GPU run would show only in a profiler: registers a thread, spills, shared memory.

    python3 scripts/cuda-compile.py TOOLKIT FILE.cu ...

TOOLKIT is the folder scripts/cuda-toolkit.sh prints. One line per kernel:
`ok  registers  spill stores/loads  static shared memory  file  comptime settings` (CubeCL's
stage buffers are dynamic shared memory: the codegen record counts those), or the
compiler's log on failure. The status is 1 if any kernel failed to compile or assemble.
"""

import ctypes
import os
import re
import subprocess
import sys
import tempfile

ARCH = "sm_90a"  # what CubeCL's CUDA runtime asks NVRTC for on sm_90


def nvrtc_ptx(lib, includes, path):
    """(PTX or None, log) for one source."""
    source = open(path, "rb").read()
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), source, path.encode(), 0, None, None)
    if rc != 0:
        return None, f"nvrtcCreateProgram returned {rc}"
    options = [f"--gpu-architecture={ARCH}".encode(), b"-lineinfo"]
    options += [f"--include-path={i}".encode() for i in includes]
    array = (ctypes.c_char_p * len(options))(*options)
    try:
        rc = lib.nvrtcCompileProgram(prog, len(options), array)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        log = log.value.decode(errors="replace")
        if rc != 0:
            return None, log
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetPTX(prog, ptx)
        return ptx.value.decode(), log
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def ptxas_report(ptxas, ptx):
    """(registers, spill stores, spill loads, shared bytes) or an error string."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        run = subprocess.run(
            [ptxas, f"-arch={ARCH}", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True,
            text=True,
        )
    if run.returncode != 0:
        return run.stderr
    text = run.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    smem = re.search(r"(\d+) bytes smem", text)
    if not regs or not spills:
        return f"ptxas -v said nothing parseable:\n{text}"
    return (
        int(regs.group(1)),
        int(spills.group(1)),
        int(spills.group(2)),
        int(smem.group(1)) if smem else 0,
    )


def comptime_settings(path):
    """The kernel's top-level comptime numbers and switches, from the `//` header the
    codegen dump writes (its id): `warps_m=2 frags_m=3 ...`."""
    settings = []
    for line in open(path, errors="replace"):
        if not line.startswith("//"):
            break
        m = re.match(r"//     (\w+): (\d+|true|false),$", line.rstrip())
        if m:
            settings.append(f"{m.group(1)}={m.group(2)}")
    return " ".join(settings)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    root = os.path.join(sys.argv[1], "nvidia")
    lib = ctypes.CDLL(os.path.join(root, "cuda_nvrtc", "lib", "libnvrtc.so.12"))
    includes = [os.path.join(root, p, "include") for p in ("cuda_runtime", "cuda_nvcc", "cuda_cccl")]
    ptxas = os.path.join(root, "cuda_nvcc", "bin", "ptxas")
    failed = 0
    for path in sys.argv[2:]:
        name = os.path.basename(path)
        ptx, log = nvrtc_ptx(lib, includes, path)
        if ptx is None:
            failed += 1
            print(f"FAILED  nvrtc  {name}\n{log}")
            continue
        report = ptxas_report(ptxas, ptx)
        if isinstance(report, str):
            failed += 1
            print(f"FAILED  ptxas  {name}\n{report}")
            continue
        regs, stores, loads, smem = report
        print(
            f"ok  {regs:3d} regs  spills {stores}/{loads} B  static smem {smem} B  {name}"
            f"  {comptime_settings(path)}"
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
