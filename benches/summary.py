#!/usr/bin/env python3
"""Prints criterion's results as a Markdown table: one row per benchmark, with the median
time per iteration and its 95 % confidence interval (criterion's bootstrap), and throughput
where the benchmark declared one.

    cargo bench --workspace && python3 benches/summary.py [target/criterion]
"""
import json
import sys
from pathlib import Path


def fmt_time(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
    print("| benchmark | median | 95 % CI of the median | throughput at the median |")
    print("|---|---:|---:|---:|")
    for bench in sorted(root.glob("**/new/benchmark.json")):
        meta = json.loads(bench.read_text())
        est = json.loads((bench.parent / "estimates.json").read_text())["median"]
        ns = est["point_estimate"]
        ci = est["confidence_interval"]
        rate = ""
        tp = meta.get("throughput") or {}
        if "Elements" in tp:
            rate = f"{tp['Elements'] / ns * 1e3:.3g} M elem/s"
        elif "Bytes" in tp:
            rate = f"{tp['Bytes'] / ns:.3g} GB/s"
        ci_text = f"{fmt_time(ci['lower_bound'])} – {fmt_time(ci['upper_bound'])}"
        print(f"| {meta['full_id']} | {fmt_time(ns)} | {ci_text} | {rate} |")


if __name__ == "__main__":
    main()
