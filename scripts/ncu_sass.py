#!/usr/bin/env python3
"""Sums ncu's per-instruction source page (`ncu -i REP --page source --csv --print-source
sass`) by opcode and by loop, so a kernel's warp-state samples say which instructions the
warps wait at (and why) without the GUI.

    python3 scripts/ncu_sass.py LABEL-sass.csv

Prints the page's columns, every numeric column summed by opcode (largest first, for the
sampling and instruction-count columns), the instructions that hold the most samples, and
the samples inside each loop (a backward branch and its target) against the whole kernel.
The page's column names differ between ncu versions, so columns are matched by words."""

import csv
import re
import sys
from collections import defaultdict


def number(text):
    text = text.replace(",", "").strip()
    try:
        return float(text)
    except ValueError:
        return None


def opcode(source):
    """`@!P0 LDGSTS.E.BYPASS.128 [R1], [R2.64]` → `LDGSTS`."""
    words = source.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return words[0].split(".")[0] if words else "?"


def read_page(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    for i, row in enumerate(rows):
        if "Source" in row and any("Address" in c for c in row):
            return row, rows[i + 1 :]
    sys.exit(f"ncu_sass: no header with Address and Source in {path}")


def main():
    header, rows = read_page(sys.argv[1])
    col = {name: i for i, name in enumerate(header)}
    src, addr_col = col["Source"], next(i for i, c in enumerate(header) if "Address" in c)
    insts = []
    for row in rows:
        if len(row) != len(header):
            continue
        text = row[addr_col].strip()
        addr = int(text, 16) if re.fullmatch(r"0x[0-9a-fA-F]+", text) else number(text)
        if addr is None:
            continue
        values = {name: number(row[i]) for name, i in col.items() if i not in (src, addr_col)}
        insts.append((int(addr), row[src].strip(), {k: v for k, v in values.items() if v is not None}))
    print(f"columns: {header}")
    print(f"instructions: {len(insts)}")
    wanted = [c for c in header if re.search(r"sampl|stall|executed", c, re.I)]
    samples = next((c for c in wanted if re.search(r"all samples", c, re.I)), wanted[0] if wanted else None)

    for name in wanted:
        by_op = defaultdict(float)
        for _, source, values in insts:
            by_op[opcode(source)] += values.get(name, 0.0)
        total = sum(by_op.values())
        if total == 0:
            continue
        top = sorted(by_op.items(), key=lambda kv: -kv[1])[:12]
        print(f"\n{name} (total {total:,.0f}) by opcode:")
        for op, v in top:
            print(f"  {op:10s} {v:14,.0f} {100 * v / total:5.1f} %")

    if samples is None:
        return
    print(f"\ntop instructions by '{samples}':")
    for addr, source, values in sorted(insts, key=lambda t: -t[2].get(samples, 0))[:40]:
        print(f"  {addr:#07x} {values.get(samples, 0):10,.0f}  {source}")

    # Loops: a branch back to a lower address; samples inside each against the kernel's.
    total = sum(v.get(samples, 0) for _, _, v in insts)
    print(f"\nloops (backward branches), share of '{samples}':")
    for addr, source, _ in insts:
        m = re.search(r"\bBRA\b.*?(0x[0-9a-fA-F]+)", source)
        if m and int(m.group(1), 16) < addr:
            lo = int(m.group(1), 16)
            body = [t for t in insts if lo <= t[0] <= addr]
            inside = sum(t[2].get(samples, 0) for t in body)
            hmma = sum(1 for t in body if opcode(t[1]) == "HMMA")
            print(f"  {lo:#07x}-{addr:#07x} {len(body):5d} instrs {hmma:4d} HMMA "
                  f"{100 * inside / max(total, 1):5.1f} %")


if __name__ == "__main__":
    main()
