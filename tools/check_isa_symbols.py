"""Lists the inline functions and template instances that ISA-specific objects share with
objects compiled with other flags (issue 22).

Each *_avx2.cpp / *_avx512.cpp object is compiled with wider instruction sets. A weak symbol it
defines (an inline function or a template instance not inlined everywhere: std::vector<float>'s
members, std::min<long>, a helper template in a shared header) is merged by the linker with the
same symbol from every other object, and one copy, possibly the AVX-512 one, serves all callers,
including the portable path on a CPU without AVX. Code written against csrc/simd lives in
namespace fg::<isa> and so never collides; this lists what does.

    python tools/check_isa_symbols.py [build-dir]     (default: build; needs nm)
Exit status 1 when a shared symbol is found, with the list.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict

ISA_RE = re.compile(r"_(avx2|avx512|avx512bf16|amx)\.cpp\.o$")


def weak_symbols(obj):
    out = subprocess.run(["nm", "--defined-only", obj], capture_output=True, text=True, check=True).stdout
    syms = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in ("W", "V", "u"):
            syms.add(parts[2])
    return syms


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    return out.splitlines()


def shared(build):
    objs = []
    for d, _, files in os.walk(build):
        objs += [os.path.join(d, f) for f in files if f.endswith(".cpp.o") and "/_C.dir/" in os.path.join(d, f)]
    flags = {o: (ISA_RE.search(o).group(1) if ISA_RE.search(o) else "baseline") for o in objs}
    where = defaultdict(set)
    for o in objs:
        for s in weak_symbols(o):
            where[s].add(flags[o])
    bad = sorted(s for s, fl in where.items() if len(fl) > 1)
    return bad, {s: where[s] for s in bad}, len(objs)


def main(argv):
    build = argv[1] if len(argv) > 1 else "build"
    bad, fl, n = shared(build)
    if not n:
        print(f"no objects under {build}/ (build first: cmake -S . -B build -G Ninja && cmake --build build)")
        return 2
    if not bad:
        print(f"ok: {n} objects, no weak symbol defined under two flag sets")
        return 0
    print(f"{len(bad)} weak symbols defined in objects built with different flags:")
    for name, raw in zip(demangle(bad), bad):
        print(f"  [{', '.join(sorted(fl[raw]))}] {name}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
