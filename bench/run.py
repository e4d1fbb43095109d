"""Run every bench/bench_<op>.py, print one Markdown table per benchmark, write JSON.

    python -m bench                     # all benchmarks, 2 threads (or FUSEGRAD_BENCH_THREADS)
    python -m bench matmul layernorm    # only these
    python -m bench --quick             # smaller shape lists, for a smoke run
    python -m bench --out results.json

Each bench module exposes ``run(limits, quick) -> list[dict]``; a row's keys become the
table's columns. Times are medians of interleaved samples (bench/common.py).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))


def table(rows: list[dict]) -> str:
    from bench.common import fmt

    if not rows:
        return "(no rows)\n"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(out) + "\n"


def common_ab() -> list[str]:
    from bench import common

    return common.AB_ISAS


def main(argv=None) -> int:
    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {', '.join(available())})")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=int(os.environ.get("FUSEGRAD_BENCH_THREADS", "2")))
    p.add_argument("--out", default=str(HERE / "results" / "latest.json"))
    p.add_argument("--isa", default=None,
                   help="run fusegrad on this ISA path (portable, avx2, avx512); default: the best. Several, "
                        "comma-separated (--isa avx2,avx512): each timing of ours is taken on every path in the "
                        "same interleaved rounds, with a column per path (benchmarks that add ab_cols)")
    args = p.parse_args(argv)

    import fusegrad
    from bench.common import measure_limits, torch_threads

    fusegrad.set_num_threads(args.threads)
    if args.isa:
        from bench import common

        isas = [i.strip() for i in args.isa.split(",") if i.strip()]
        for i in isas:
            if i not in fusegrad._C.isas_supported():
                p.error(f"--isa {i}: this CPU/build runs only {', '.join(fusegrad._C.isas_supported())}")
        fusegrad._C.set_isa(isas[0])
        if len(isas) > 1:
            common.AB_ISAS[:] = isas
    torch_threads(args.threads)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    limits = measure_limits(args.threads)
    peaks = ", ".join(f"{k[len('peak_gflops_'):]} {v:.1f}" for k, v in limits.extra.items()
                      if k.startswith("peak_gflops_"))
    header = (f"machine: {fusegrad._config.cpu_model()}, {os.cpu_count()} cpus; "
              f"threads {args.threads}; isa {fusegrad._C.get_isa()}"
              f"{' (A/B: ' + ' vs '.join(common_ab()) + ')' if common_ab() else ''}; "
              f"measured peak fp32 FMA {limits.peak_gflops:.1f} GFLOP/s ({peaks}), copy {limits.copy_gbs:.1f} GB/s")
    print(header, flush=True)
    results = {"header": header, "limits": vars(limits), "time": time.strftime("%Y-%m-%d %H:%M:%S"), "benchmarks": {}}
    md = [f"{header}\n"]
    for name in args.names or available():
        mod = importlib.import_module(f"bench.bench_{name}")
        t0 = time.perf_counter()
        rows = mod.run(limits, args.quick)
        block = f"\n### {name}  ({time.perf_counter() - t0:.0f} s)\n\n" + table(rows)
        print(block, flush=True)
        md.append(block)
        results["benchmarks"][name] = rows
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, out)
    out.with_suffix(".md").write_text("".join(md))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
