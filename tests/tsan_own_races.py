#!/usr/bin/env python3
"""Sorts ThreadSanitizer reports into those inside gRPC and those to read.

Abseil is instrumented in the TSan run (tests/tsan/run.sh); gRPC, protobuf and OpenSSL are not:
TSan sees neither their accesses nor their atomics, so it misses the ordering gRPC provides
between its own threads (completion queues, closures, slice reference counts) and reports
gRPC's own bookkeeping, done by gRPC's inline C++ headers compiled into our binaries or by
Abseil code gRPC calls, as races.

Each access of a report (the current one and the previous one) is attributed to the first frame
of its stack that is not TSan's runtime, the C++ standard library or Abseil (those only run on
someone's behalf). Three kinds:
  grpc      both accesses attributed to gRPC, protobuf or OpenSSL (headers or libraries):
            counted, not listed.
  lifetime  a block changing hands between optd and gRPC, one access in each: gRPC frees a
            block (a received message's slice) after optd read it (never wrote it): two
            messages can share one block of gRPC's read buffer and the last reference frees it;
            or optd allocates or frees a block (a reactor, a client stream) that gRPC's code
            accessed: optd hands it to gRPC after constructing it and deletes it after OnDone.
            gRPC orders both with its own atomics, which TSan cannot see. A real error of this
            kind is a use after free, which the ASan run checks. Listed in full, to read, but
            not a failure.
  to read   everything else: an access in optd's code (tests included) or unknown. Listed in
            full; the run fails on these.

Usage: tsan_own_races.py LOG...   Exit status 1 when some report is "to read".
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
                     r"\((libgrpc|libgrpc\+\+|libgpr|libprotobuf|libupb|libssl|libcrypto)"
                     r"[\w.+-]*\+0x|^(grpc_core::|grpc::|grpc_|gpr_|google::protobuf::|OSSL_)")
FREE = re.compile(r"^(free|operator delete)")
ALLOCATOR = re.compile(r"^(free|operator delete|operator new|malloc|calloc|realloc)\b")
OWN = re.compile(r"\boptd::|\.\./(server|optim_core|client|tests)/")


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


def lifetime(block, stacks, owners):
    """A block changing hands between optd and gRPC (see the module's comment)."""
    if len(stacks) != 2 or not all(stacks):
        return False
    kinds = [m.group(1) for line in block.splitlines() if (m := ACCESS.match(line))]
    for grpc_side in (0, 1):
        own = 1 - grpc_side
        if owners[grpc_side] != "grpc" or not OWN.search(owners[own]):
            continue
        if FREE.search(stacks[grpc_side][0]) and "read" in kinds[own].lower():
            return True
        if ALLOCATOR.search(stacks[own][0]):
            return True
    return False


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
    kinds = {"lifetime": collections.Counter(), "to read": collections.Counter()}
    examples = {}
    for block in blocks:
        stacks = access_stacks(block)
        owners = [owner(s) for s in stacks]
        if stacks and all(o == "grpc" for o in owners):
            library += 1
            continue
        kind = "lifetime" if lifetime(block, stacks, owners) else "to read"
        key = " | ".join(re.sub(r" \(\S+\+0x[0-9a-f]+\)", "", o) for o in owners if o != "grpc")
        kinds[kind][key] += 1
        examples.setdefault((kind, key), block)
    print(f"TSan reports: {len(blocks)}; inside gRPC on both sides: {library}; "
          f"lifetime at the gRPC boundary: {sum(kinds['lifetime'].values())}; "
          f"to read: {sum(kinds['to read'].values())} ({len(kinds['to read'])} places)")
    for kind, counter in kinds.items():
        for key, n in counter.most_common():
            print(f"{n:6d}  {kind}: {key}")
    for (kind, key), block in examples.items():
        print("\n" + "=" * 100 + f"\n[{kind}]\n" + block)
    return 1 if kinds["to read"] else 0


if __name__ == "__main__":
    sys.exit(main())
