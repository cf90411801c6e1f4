#!/usr/bin/env python3
"""Sorts ThreadSanitizer reports into those inside gRPC/protobuf and those to read.

Abseil is instrumented in the TSan run (tests/tsan/run.sh), gRPC and protobuf are not: TSan sees
neither their accesses nor their atomics, so it misses the ordering gRPC provides between its
own threads (completion queues, closures, reference counts) and reports gRPC's own bookkeeping,
done by gRPC's inline C++ headers compiled into our binaries or by Abseil code gRPC calls, as
races. Those are counted here, not read.

Each access of a report (the current one and the previous one) is attributed to the first frame
of its stack that is not TSan's runtime, the C++ standard library or Abseil (those only run on
someone's behalf). A report counts as gRPC's only when BOTH accesses are attributed to gRPC or
protobuf (their headers or libraries). Every other report (one access or both in optd's code,
tests included, or anything unknown) is listed in full: it needs reading, and run.sh fails on it.

Usage: tsan_own_races.py LOG...   Exit status 1 when some report is not gRPC's alone.
"""
import collections
import re
import sys

ACCESS = re.compile(r"\s*(Write|Read|Previous write|Previous read|Atomic \w+|Previous atomic \w+)"
                    r" of size")
FRAME = re.compile(r"\s*#\d+ (.*)")
# Frames that run on behalf of their caller: TSan's runtime, libstdc++ and Abseil.
TRANSPARENT = re.compile(r"libsanitizer|\(libtsan\.so|/usr/include/c\+\+/|\(libstdc\+\+\.so|"
                         r"absl/|\(libabsl_|^absl::|^std::|^operator (new|delete)|^__tsan")
LIBRARY = re.compile(r"/usr/include/(grpcpp|grpc|google/protobuf)/|"
                     r"\((libgrpc|libgrpc\+\+|libgpr|libprotobuf|libupb)[\w.+-]*\+0x|"
                     r"^(grpc_core::|grpc::|grpc_|gpr_|google::protobuf::)")


def reports(text):
    for block in text.split("==================\n"):
        if "WARNING: ThreadSanitizer" in block:
            yield block


def access_stacks(block):
    """The frames of each memory access of the report (usually two)."""
    stacks, current = [], None
    for line in block.splitlines():
        if ACCESS.match(line):
            current = []
            stacks.append(current)
        elif current is not None and (m := FRAME.match(line)):
            current.append(m.group(1))
        elif current is not None and not line.strip():
            current = None
    return stacks


def owner(frames):
    """'grpc' or the attributed frame (text) of one access."""
    for frame in frames:
        if TRANSPARENT.search(frame):
            continue
        return "grpc" if LIBRARY.search(frame) else frame
    return "unknown: " + (frames[0] if frames else "no stack")


def main():
    blocks = [b for path in sys.argv[1:] for b in reports(open(path, errors="replace").read())]
    library = 0
    to_read = collections.Counter()
    examples = {}
    for block in blocks:
        stacks = access_stacks(block)
        owners = [owner(s) for s in stacks]
        if stacks and all(o == "grpc" for o in owners):
            library += 1
            continue
        key = " | ".join(re.sub(r" \(\S+\+0x[0-9a-f]+\)", "", o) for o in owners if o != "grpc")
        to_read[key] += 1
        examples.setdefault(key, block)
    print(f"TSan reports: {len(blocks)}; inside gRPC/protobuf on both sides: {library}; "
          f"to read: {sum(to_read.values())} ({len(to_read)} places)")
    for key, n in to_read.most_common():
        print(f"{n:6d}  {key}")
    for key, block in examples.items():
        print("\n" + "=" * 100 + "\n" + block)
    return 1 if to_read else 0


if __name__ == "__main__":
    sys.exit(main())
