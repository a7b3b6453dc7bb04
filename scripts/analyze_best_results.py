#!/usr/bin/env python
"""Tabulate the best validation results of runs against the paper and public reproductions.

Usage:
    python scripts/analyze_best_results.py [OUTPUT_DIR] [--published PATH] [--out DIR]
    python scripts/analyze_best_results.py --blog blog.md [OUTPUT_DIR]

OUTPUT_DIR defaults to all of `outputs/`: every `results.json` below it is read (with the
`config.json` and `eval_test.json` beside it), whatever the schema, status or kind of run.
The script prints markdown tables per task (WikiText-2, SNLI) and writes
`best_results_summary.json` into --out (default `outputs/analysis/`, which git ignores),
never into the run directories.

With --blog FILE it instead rewrites the text between `<!-- results:begin -->` and
`<!-- results:end -->` in FILE from every run under `outputs/` that git tracks (`git add`
new runs first), or every run under OUTPUT_DIR, and the GPU benchmark JSON under
`results/bench/`; QUICK smoke runs are left out; nothing else in FILE changes, and running
it twice changes nothing.

* One run per (configuration, seed): reruns and resumed copies are dropped (newest
  finished copy kept) and listed on stderr.
* Each model's learning rate is chosen on validation, on the seeds every lr has; test
  numbers are those of the chosen lr's seeds, from eval_test.json where a run has one.
* Configurations (which include the model size) are summarised over seeds as mean ±
  sample std; runs that did not complete (diverged, interrupted) are listed and kept out
  of the means.
* The Grassmann/Transformer gaps (G-paper vs T-preLN, G-paper vs T-postLN, G-no-extra
  vs T, ...) come with a Welch 95% confidence interval (PPL ratio on the log scale for
  WikiText-2, accuracy difference for SNLI).
* Only full-corpus runs at the paper's size appear under "Paper comparison"; runs on a
  reduced corpus, of another size, and QUICK smoke runs each have their own section,
  without the published numbers beside them.
The logic lives in `grassmann_flows.analysis`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from grassmann_flows.analysis.load import (  # noqa: E402
    ANALYSIS_DIR, OUTPUTS_ROOT, PUBLISHED_JSON, ResultsError, display_path, json_safe, load_committed_runs,
    load_runs, replace_between_markers, resolve_output_dir,
)
from grassmann_flows.analysis.summary import load_published, summarize  # noqa: E402
from grassmann_flows.analysis.tables import (  # noqa: E402
    BLOG_BEGIN, BLOG_END, SUMMARY_NAME, blog_section, report_markdown, summary_json,
)
from grassmann_flows.bench.results import BENCH_DIR, BenchFileError, gpu_bench_files  # noqa: E402


def _blog(args: argparse.Namespace, published: list) -> int:
    """--blog: rewrite the results section of the blog from committed runs (or OUTPUT_DIR)."""
    root = Path(args.output_dir) if args.output_dir else OUTPUTS_ROOT
    if args.output_dir is not None and not root.is_dir():
        raise ResultsError(f"output directory not found: {root}")
    runs = load_runs(root, allow_empty=True) if args.output_dir else load_committed_runs(root)
    quick = [r for r in runs if r.quick]
    if quick:
        print(f"left {len(quick)} QUICK smoke run(s) out of the blog", file=sys.stderr)
    runs = [r for r in runs if not r.quick]
    source = f"`{display_path(root)}/`" + (" and `results/bench/`" if args.bench_dir == BENCH_DIR else "")
    section = blog_section(runs, summarize(runs, published), gpu_bench_files(args.bench_dir), source)
    changed = replace_between_markers(args.blog, BLOG_BEGIN, BLOG_END, section)
    print(f"{'rewrote' if changed else 'unchanged:'} results section of {args.blog}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", nargs="?",
                        help="runs to read (default: all of outputs/; with --blog, the runs git tracks there)")
    parser.add_argument("--published", type=Path, default=PUBLISHED_JSON,
                        help="published reference numbers (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ANALYSIS_DIR,
                        help=f"directory for {SUMMARY_NAME} (default: outputs/analysis/, git-ignored)")
    parser.add_argument("--blog", type=Path, help="rewrite the results section of this markdown file")
    parser.add_argument("--bench-dir", type=Path, default=BENCH_DIR,
                        help="with --blog: benchmark JSON directory (default: results/bench/)")
    args = parser.parse_args(argv)
    try:
        published = load_published(args.published)
        if args.blog is not None:
            return _blog(args, published)
        output_dir = resolve_output_dir(args.output_dir)
        runs = load_runs(output_dir)
    except (ResultsError, BenchFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summaries = summarize(runs, published)
    print(report_markdown(output_dir, runs, summaries))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / SUMMARY_NAME
    summary = json_safe(summary_json(output_dir, args.published, runs, summaries))
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}", file=sys.stderr)  # stderr, so stdout stays pure markdown
    return 0


if __name__ == "__main__":
    sys.exit(main())
