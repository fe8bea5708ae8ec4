#!/usr/bin/env python3
"""Compile kernel sources dumped by the codegen target (SSM_CODEGEN_DUMP) as the GPU does,
NVRTC with CubeCL's options for sm_90a, then assemble the PTX with ptxas, which reports
what a GPU run would show only in a profiler: registers a thread, spills, shared memory.

    python3 scripts/cuda-compile.py TOOLKIT FILE.cu ...
    SASS=DIR python3 scripts/cuda-compile.py TOOLKIT FILE.cu ...

TOOLKIT is the folder scripts/cuda-toolkit.sh prints. One line per kernel:
`ok  registers  spill stores/loads  static shared memory  file  comptime settings` (CubeCL's
stage buffers are dynamic shared memory: the codegen record counts those), or the
compiler's log on failure. The status is 1 if any kernel failed to compile or assemble.

With SASS=DIR each kernel's machine code is disassembled (nvdisasm) into DIR/NAME.sass
(for NAME.cu), and every loop of it (a branch back to an earlier instruction) gets a line
under the kernel's: its instructions by opcode, most frequent first (HMMA tensor-core
products, LDSM fragment loads, LDGSTS asynchronous copies, IMAD/IADD3/ISETP integer work,
...), which is what a loop issues an iteration; a loop holding others counts theirs once.
"""

import collections
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


def ptxas_report(ptxas, ptx, nvdisasm=None):
    """((registers, spill stores, spill loads, shared bytes), SASS text or None) or an
    error string; the SASS only when nvdisasm is given."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        cubin = os.path.join(tmp, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        run = subprocess.run(
            [ptxas, f"-arch={ARCH}", "-v", src, "-o", cubin],
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            return run.stderr
        sass = None
        if nvdisasm:
            dis = subprocess.run([nvdisasm, "-c", cubin], capture_output=True, text=True)
            if dis.returncode != 0:
                return f"nvdisasm failed:\n{dis.stderr}"
            sass = dis.stdout
    text = run.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    smem = re.search(r"(\d+) bytes smem", text)
    if not regs or not spills:
        return f"ptxas -v said nothing parseable:\n{text}"
    counts = (
        int(regs.group(1)),
        int(spills.group(1)),
        int(spills.group(2)),
        int(smem.group(1)) if smem else 0,
    )
    return counts, sass


def loop_mixes(sass):
    """One line per loop of the disassembly: its address range and its instructions by
    opcode (the mnemonic before the first dot), most frequent first."""
    instrs, labels, pending = [], {}, []
    for line in sass.splitlines():
        label = re.match(r"\s*\.L_x_(\d+):", line)
        if label:
            pending.append(label.group(1))
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if not m:
            continue
        addr = int(m.group(1), 16)
        for name in pending:
            labels[name] = addr
        pending = []
        words = m.group(2).split()
        op = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
        instrs.append((addr, op.split(".")[0], m.group(2)))
    lines = []
    for addr, op, text in instrs:
        target = re.search(r"BRA\s+`\(\.L_x_(\d+)\)", text)
        start = labels.get(target.group(1)) if target else None
        # (A branch to itself is the kernel's closing trap, not a loop.)
        if op != "BRA" or start is None or start >= addr:
            continue
        mix = collections.Counter(o for a, o, _ in instrs if start <= a <= addr)
        top = ", ".join(f"{o} {n}" for o, n in mix.most_common(12))
        lines.append(f"loop {start:#06x}-{addr:#06x}  {sum(mix.values())} instructions: {top}")
    return lines


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
    sass_dir = os.environ.get("SASS")
    nvdisasm = os.path.join(root, "cu13", "bin", "nvdisasm") if sass_dir else None
    if sass_dir:
        os.makedirs(sass_dir, exist_ok=True)
    failed = 0
    for path in sys.argv[2:]:
        name = os.path.basename(path)
        ptx, log = nvrtc_ptx(lib, includes, path)
        if ptx is None:
            failed += 1
            print(f"FAILED  nvrtc  {name}\n{log}")
            continue
        report = ptxas_report(ptxas, ptx, nvdisasm)
        if isinstance(report, str):
            failed += 1
            print(f"FAILED  ptxas  {name}\n{report}")
            continue
        (regs, stores, loads, smem), sass = report
        print(
            f"ok  {regs:3d} regs  spills {stores}/{loads} B  static smem {smem} B  {name}"
            f"  {comptime_settings(path)}"
        )
        if sass is not None:
            with open(os.path.join(sass_dir, name.removesuffix(".cu") + ".sass"), "w") as f:
                f.write(sass)
            for line in loop_mixes(sass):
                print(f"    {line}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
