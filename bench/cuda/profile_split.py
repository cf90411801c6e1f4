#!/usr/bin/env python3
"""Splits the update kernel's executed instructions into phases (bench/RESULTS.md, version 11).

Inputs: the SASS listing with line information of a kernel_lab build (nvdisasm --print-line-info
on a cubin built like bench/cuda/kernel_lab.sh builds, with -cubin), and Nsight Compute's
per-instruction counts of the same build (ncu --section SourceCounters, then
`ncu --import REP --page source --print-source sass --csv`). The two list the kernel's
instructions in the same order (checked). Each instruction is attributed to its source line;
lines are grouped into phases by the line ranges below, which belong to one version of
optim_core/cuda/adamw_kernels.cu (update them with the file). Instructions of shared helpers
(table lookups, conversions: other files) count for the phase of the next instruction that has
its own phase, i.e. the code that uses them.

usage: profile_split.py LISTING CSV FUNCTION_SUBSTRING [ELEMENTS]
"""
import collections
import csv
import re
import sys

# Line ranges of adamw_kernels.cu as of version 11 (the recorded split) and the phase of each;
# update them with the file.
PHASES = [
    ((50, 300), "loads, stores, staging, byte (un)packing"),
    ((301, 361), "block addresses, staged/global choice"),
    ((362, 376), "dequantize + moments + NaN/Inf"),
    ((377, 387), "block absmax, NaN count"),
    ((388, 398), "update (sqrt, division, bf16 rounding, decay)"),
    ((399, 400), "loads, stores, staging, byte (un)packing"),
    ((401, 407), "requantize: division by absmax"),
    ((408, 418), "requantize: common-block test"),
    ((419, 423), "requantize: bucket search"),
    ((424, 427), "requantize: sign fix (rare blocks)"),
]
SEARCH_FILES = {"quant_buckets.h"}


def listing(path, function):
    """(opcode, (file, line)) of each instruction of the function's text section."""
    out, where, inside = [], None, False
    for line in open(path):
        m = re.match(r"\s*\.section\s+\.text\.(\S+),", line)
        if m:
            inside = function in m.group(1)
            continue
        if not inside:
            continue
        m = re.search(r'//## File "([^"]+)", line (\d+)', line)
        if m:
            where = (m.group(1).split("/")[-1], int(m.group(2)))
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            words = m.group(2).split()
            out.append((words[1] if words[0].startswith("@") else words[0], where))
    return out


def counts(path):
    rows = list(csv.reader(open(path)))
    header = rows[1]
    src, executed = header.index("Source"), header.index("Instructions Executed")
    out = []
    for r in rows[2:]:
        if len(r) > executed:
            words = r[src].split() or [""]
            out.append((words[1] if words[0].startswith("@") else words[0], int(r[executed] or 0)))
    return out


def phase(where):
    if where is None:
        return None
    name, line = where
    if name in SEARCH_FILES or (name == "quantize.cuh" and line >= 50):
        return "requantize: bucket search"
    if name != "adamw_kernels.cu":
        return None
    for (first, last), p in PHASES:
        if first <= line <= last:
            return p
    return "loop, segments, setup"


def main():
    sass, measured = listing(sys.argv[1], sys.argv[3]), counts(sys.argv[2])
    elements = int(sys.argv[4]) if len(sys.argv) > 4 else 256 << 20
    if len(sass) != len(measured) or any(a[0] != b[0] for a, b in zip(sass, measured)):
        sys.exit("the listing and the profile are not the same build")
    phases = [phase(w) for _, w in sass]
    for i in range(len(phases) - 1, -1, -1):
        if phases[i] is None:
            phases[i] = phases[i + 1] if i + 1 < len(phases) else "loop, segments, setup"
    total = collections.Counter()
    for p, (_, n) in zip(phases, measured):
        total[p] += n
    n = sum(total.values())
    print(f"{n} warp instructions = {n * 32 / elements:.1f} thread instructions per element")
    for p, c in total.most_common():
        print(f"  {100 * c / n:5.1f}%  {c * 32 / elements:6.1f}/element  {p}")


if __name__ == "__main__":
    main()
