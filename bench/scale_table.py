#!/usr/bin/env python3
"""The scale tables of docs/benchmarks.md from bench/scale.py's results: each cell
"before → **after**" (after only when there is no before file).

Usage: python3 bench/scale_table.py [--after bench/results/scale.json]
       [--before bench/results/scale-before.json]
"""

import argparse
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def duration(s):
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def cell(before, after, fmt):
    return f"{fmt(before)} → **{fmt(after)}**" if before is not None else f"**{fmt(after)}**"


def table(before_rows, after_rows):
    head = ("| N | master RSS (KiB) | idle CPU % | wakeups/min | start → ready | status (size) | "
            "/metrics (size) | kill → new child | reload batch 1 | reload 25% |")
    lines = [head, "|" + "---|" * 10]
    before = {r["workers"]: r for r in before_rows or []}
    for a in after_rows:
        b = before.get(a["workers"])
        get = (lambda k: b[k]) if b else (lambda k: None)
        lines.append("| " + " | ".join([
            str(a["workers"]),
            cell(get("rss_kib"), a["rss_kib"], str),
            cell(get("idle_cpu_percent"), a["idle_cpu_percent"], lambda v: f"{v:.2g}" if 0 < v < 1 else f"{v:.1f}"),
            f"{a['wakeups_per_minute']:.0f}",
            cell(get("start_to_ready_s"), a["start_to_ready_s"], duration),
            cell(get("status_s"), a["status_s"], duration) + f" ({a['status_bytes'] // 1024} KiB)",
            cell(get("metrics_s"), a["metrics_s"], duration) + f" ({a['metrics_bytes'] // 1024} KiB)",
            cell(get("kill_to_new_child_s"), a["kill_to_new_child_s"], duration),
            cell(get("reload_batch_1_s"), a["reload_batch_1_s"], duration),
            cell(get("reload_batch_25pct_s"), a["reload_batch_25pct_s"], duration),
        ]) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--after", default=os.path.join(ROOT, "bench/results/scale.json"))
    ap.add_argument("--before", default=os.path.join(ROOT, "bench/results/scale-before.json"))
    args = ap.parse_args()
    after = json.load(open(args.after))
    before = json.load(open(args.before)) if os.path.exists(args.before) else {}
    print("Workers that are ready at exec (`sleep`, `ready.mode = \"spawn\"`):\n")
    print(table(before.get("sizes"), after["sizes"]))
    print("\nWorkers that send `READY=1` (`systemd-notify --ready`, then `sleep`):\n")
    print(table(before.get("notify"), after["notify"]))
    if "pools" in after:
        p, q = after["pools"], before.get("pools")
        print(f"\n{p['pools']} pools of {p['workers_each']} workers on one host: masters' total RSS "
              + (f"{q['total_master_rss_kib'] // 1024} → " if q else "")
              + f"**{p['total_master_rss_kib'] // 1024} MiB** ({p['master_rss_kib_each']} KiB each), total idle CPU "
              + (f"{q['total_idle_cpu_percent']:.1f} % → " if q else "")
              + f"**{p['total_idle_cpu_percent']:.2f} %** of a core "
              + f"({p['wakeups_per_minute'] / p['pools']:.0f} wakeups a minute each).")


if __name__ == "__main__":
    main()
