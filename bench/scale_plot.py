#!/usr/bin/env python3
"""Plot bench/scale.py's figures against N (before and after, when both files exist).

Usage: /usr/bin/python3 bench/scale_plot.py [--after bench/results/scale.json]
       [--before bench/results/scale-before.json] [--out docs/bench-scale.png]
Needs Debian's python3-matplotlib.
"""

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = [
    ("rss_kib", "master RSS (KiB)", 1),
    ("idle_cpu_percent", "idle CPU (% of a core)", 1),
    ("start_to_ready_s", "start → all ready (ms)", 1000),
    ("status_s", "corral status (ms)", 1000),
    ("metrics_s", "/metrics (ms)", 1000),
    ("reload_batch_1_s", "rolling reload, batch 1 (s)", 1),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--after", default=os.path.join(ROOT, "bench/results/scale.json"))
    ap.add_argument("--before", default=os.path.join(ROOT, "bench/results/scale-before.json"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/bench-scale.png"))
    args = ap.parse_args()
    runs = [("after", json.load(open(args.after)))]
    if os.path.exists(args.before):
        runs.insert(0, ("before", json.load(open(args.before))))
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, label, scale) in zip(axes.flat, FIGURES):
        for name, data in runs:
            for kind, style in (("sizes", "-o"), ("notify", "--s")):
                rows = data.get(kind, [])
                if rows:
                    # On a log axis a 0 (an idle CPU under the clock tick "before") is not drawn.
                    ys = [r[key] * scale if r[key] > 0 else float("nan") for r in rows]
                    ax.plot([r["workers"] for r in rows], ys, style,
                            label=f"{name}, {'spawn' if kind == 'sizes' else 'notify'} workers")
        ax.set_xscale("log", base=2)
        if key != "rss_kib":
            # Before and after differ by orders of magnitude at 1024 workers.
            ax.set_yscale("log")
        ax.set_xlabel("workers")
        ax.set_title(label)
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("corral master cost against pool size (bench/scale.py)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(args.out)


if __name__ == "__main__":
    main()
