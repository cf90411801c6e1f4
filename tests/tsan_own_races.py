#!/usr/bin/env python3
"""Sorts a ThreadSanitizer log into races in optd's own code and the rest.

Debian's gRPC, protobuf and Abseil are not built with TSan, so the synchronization inside them
(atomics in uninstrumented code) is invisible and TSan reports many races between gRPC's
threads in gRPC's inline headers. A report counts as optd's own here when the top frame of
either access is in optd's source tree (server/, optim_core/, client/, tests/); those are the
ones to read. Usage: tsan_own_races.py LOG  (prints a count per location, then each own report).
"""
import collections
import re
import sys

OWN = re.compile(r"\b(server|optim_core|client|tests)/[\w/]+\.(cc|h)")


def reports(text):
    for block in text.split("==================\n"):
        if "WARNING: ThreadSanitizer" in block:
            yield block


def top_frames(block):
    """The #0 frame of each access stack of the report."""
    frames = []
    lines = block.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*(Write|Read|Previous write|Previous read|Atomic)", line):
            for nxt in lines[i + 1:i + 3]:
                if nxt.strip().startswith("#0"):
                    frames.append(nxt.strip())
                    break
    return frames


def main():
    text = open(sys.argv[1], errors="replace").read()
    own, other = collections.Counter(), collections.Counter()
    examples = {}
    for block in reports(text):
        summary = next((l for l in block.splitlines() if l.startswith("SUMMARY")), "?")
        if any(OWN.search(f) for f in top_frames(block)):
            own[summary] += 1
            examples.setdefault(summary, block)
        else:
            other[summary] += 1
    print(f"reports: {sum(own.values()) + sum(other.values())}, with a top frame in optd's code: "
          f"{sum(own.values())} ({len(own)} locations)")
    for s, n in own.most_common():
        print(f"{n:6d}  {s}")
    for s, block in examples.items():
        print("\n" + "=" * 100 + "\n" + block)


if __name__ == "__main__":
    main()
