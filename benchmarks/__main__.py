"""Run the benchmarks, each in its own process, and print (or write) their results as one table.

    python -m benchmarks [--quick] [--only B1 B6] [--jobs N] [--json results.json] [--markdown table.md]

Each script prints a `RESULT {...}` line last and exits 1 when its target is missed; this runner gathers those
lines, prints a table (id, figure, ratio, target, pass, command) with the machine, and exits 1 when a script failed
or missed its target. --quick passes --quick on (tiny sizes): it checks that every script runs and gives a
well-formed result, not the targets, so its scripts run four at a time (most of a quick script is waiting for Ray,
a SuperLink or a Python start, not computing); a full run keeps one at a time, because two scripts side by side
would distort each other's ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import REPO, RESULT_PREFIX, machine

SCRIPTS = {"B1": "b1_jigsaw", "B2": "b2_cache", "B3": "b3_data_path", "B5": "b5_federation_cost",
           "B6": "b6_upload_bytes", "B8": "b8_scaling", "B9": "b9_secagg", "B10": "b10_gpu"}
# Each script's --quick time on 2 cores (2026-12-07, one at a time), to start the longest first.
QUICK_SECONDS = {"B1": 10, "B2": 5, "B3": 20, "B5": 45, "B6": 31, "B8": 57, "B9": 51, "B10": 20}
FIELDS = ("id", "figure", "ratio", "target", "pass", "command")


def run(bench: str, quick: bool, timeout: float) -> dict[str, object]:
    """One script's result line, or a failed row that says why."""
    cmd = [sys.executable, "-m", f"benchmarks.{SCRIPTS[bench]}", *(["--quick"] if quick else [])]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"id": bench, "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        return {"id": bench, "error": f"exit {proc.returncode}, no result line:\n{(proc.stdout + proc.stderr)[-2000:]}"}
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["exit"] = proc.returncode
    return result


def markdown(results: list[dict[str, object]]) -> str:
    rows = ["| id | figure | ratio | target | pass | command |", "|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['id']} | failed: {str(r['error']).splitlines()[0]} | | | no | |")
        elif "skipped" in r:
            rows.append(f"| {r['id']} | {r['figure']} | not run: {r['skipped']} | | | |")
        else:
            rows.append(f"| {r['id']} | {r['figure']} | {r['ratio']} | {r['target']} | "
                        f"{'yes' if r['pass'] else 'no'} | `{r['command']}` |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: the scripts run, the targets are not checked")
    ap.add_argument("--only", nargs="+", choices=list(SCRIPTS), metavar="ID", help="some of: " + " ".join(SCRIPTS))
    ap.add_argument("--timeout", type=float, default=7200, help="seconds one script may take")
    ap.add_argument("--jobs", type=int, help="scripts run at once (default: 4 with --quick, else 1)")
    ap.add_argument("--json", type=Path, help="write every result here")
    ap.add_argument("--markdown", type=Path, help="write the table here")
    args = ap.parse_args(argv)
    jobs = args.jobs if args.jobs is not None else (4 if args.quick else 1)
    if jobs < 1:
        ap.error(f"--jobs must be at least 1, not {jobs}")

    def one(bench: str) -> dict[str, object]:
        print(f"{bench}: running benchmarks.{SCRIPTS[bench]}{' --quick' if args.quick else ''} ...", flush=True)
        r = run(bench, args.quick, args.timeout)
        print(f"{bench}: " + (f"failed: {r['error']}" if "error" in r else f"not run: {r['skipped']}" if "skipped" in r
                              else f"{r['ratio']} (target {r['target']}, {'pass' if r['pass'] else 'MISSED'}, "
                                   f"{r['seconds']} s)"), flush=True)
        return r

    chosen = args.only or list(SCRIPTS)
    # Side by side the longest start first, so that none is left running alone; one at a time, the file's order.
    order = chosen if jobs == 1 else sorted(chosen, key=lambda b: QUICK_SECONDS.get(b, 0), reverse=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {bench: pool.submit(one, bench) for bench in order}
    results = [futures[bench].result() for bench in chosen]
    table = markdown(results)
    info = machine()
    print(f"\nmachine: {info}\n\n{table}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "quick": args.quick, "results": results}, indent=1))
    if args.markdown:
        args.markdown.write_text(f"Machine: {info}\n\n{table}\n")
    failed = [r for r in results if "error" in r or (not args.quick and r.get("pass") is False)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
