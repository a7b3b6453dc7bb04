#!/usr/bin/env python
"""Draw the project's figures from runs' JSON.

Usage:
    python scripts/visualize_results.py [OUTPUT_DIR] [--bench FILE] [--out DIR]
    python scripts/visualize_results.py --blog-images      # regenerate images/ for the blog

By default every run under OUTPUT_DIR (default all of `outputs/`, your own runs included)
is drawn into `outputs/figures/` (git-ignored). --blog-images redraws the blog's figures
in `images/` from the runs under `outputs/` that git tracks, so the committed figures
depend only on committed runs. The other inputs are `results/reference/published.json`,
`results/params/breakdown.json` (written by `scripts/param_breakdown.py`) and, for the
speed figure, the GPU benchmark JSON of `scripts/benchmark.py` (default: every
`results/bench/*.json` measured on a GPU; the newest by name is drawn).

Writes, as PNG and SVG: published_numbers, param_breakdown, <task>_results,
<task>_curves and speed_ratios (see `grassmann_flows.analysis.figures`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from grassmann_flows.analysis.figures import (  # noqa: E402
    PARAMS_JSON, plot_curves, plot_params, plot_published, plot_speed_ratios, plot_task_results,
)
from grassmann_flows.analysis.load import (  # noqa: E402
    FIGURES_DIR, OUTPUTS_ROOT, PUBLISHED_JSON, REPO_ROOT, ResultsError, load_committed_runs, load_runs,
    resolve_output_dir,
)
from grassmann_flows.analysis.summary import blog_figure_runs, load_published, summarize  # noqa: E402
from grassmann_flows.bench.results import BENCH_DIR, BenchFileError, gpu_bench_files  # noqa: E402

BLOG_IMAGES = REPO_ROOT / "images"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", nargs="?", help="runs to draw (default: every run under outputs/)")
    parser.add_argument("--blog-images", action="store_true",
                        help="redraw the blog's figures in images/ from the runs git tracks under outputs/")
    parser.add_argument("--bench", type=Path, help="benchmark JSON, or a directory of them read as one "
                        "(default: the newest GPU benchmark in results/bench/)")
    parser.add_argument("--out", type=Path,
                        help="figure directory (default: outputs/figures/; images/ with --blog-images)")
    parser.add_argument("--published", type=Path, default=PUBLISHED_JSON, help="published reference numbers")
    parser.add_argument("--params", type=Path, default=PARAMS_JSON, help="parameter breakdown JSON")
    args = parser.parse_args(argv)
    try:
        if args.blog_images:
            if args.output_dir is not None:
                raise ResultsError("--blog-images draws the committed runs under outputs/; give no OUTPUT_DIR")
            runs, out = load_committed_runs(OUTPUTS_ROOT), args.out or BLOG_IMAGES
            quick = [r for r in runs if r.quick]
            if quick:
                print(f"left {len(quick)} QUICK smoke run(s) out of the blog's figures", file=sys.stderr)
            runs = [r for r in runs if not r.quick]
        else:
            runs, out = load_runs(resolve_output_dir(args.output_dir)), args.out or FIGURES_DIR
        published = load_published(args.published)
        summaries = summarize(runs, published)
        if args.blog_images:  # the blog's result figures: configurations with BLOG_MIN_SEEDS seeds or more
            summaries = summarize(blog_figure_runs(summaries), published)
            for task, summary in summaries.items():
                if not summary.runs:  # none drawn: no stale figure either
                    for stem in (f"{task}_results", f"{task}_curves"):
                        for suffix in (".png", ".svg"):
                            (out / stem).with_suffix(suffix).unlink(missing_ok=True)
        written = plot_published(published, out) + plot_params(args.params, out)
        for summary in summaries.values():
            if summary.runs:
                written += plot_task_results(summary, out) + plot_curves(summary, out)
        bench = args.bench or next(iter(gpu_bench_files(BENCH_DIR)[-1:]), None)
        if bench is not None:
            if not bench.exists():
                raise ResultsError(f"benchmark file not found: {bench}")
            written += plot_speed_ratios(bench, out)
        else:
            print("no GPU benchmark JSON under results/bench/: skipping speed_ratios", file=sys.stderr)
    except (ResultsError, BenchFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
