#!/usr/bin/env python
"""Write a record of a sweep into results/records/<date>_<setting>/ and index it in README.md.

    python scripts/make_record.py OUTPUT_DIR [--setting NAME] [--date YYYY-MM-DD]
                                  [--command "..."] [--bench FILE|DIR] [--note "..."]
    python scripts/make_record.py --index-only      # only regenerate README's records table

A record is the project's own evidence for a set of numbers, kept with the code:
  README.md      what was run (the command), the environment header, how to read the
                 numbers (corpus, epochs, seeds, device) and the analysis tables
  record.json    date, setting, command, label, environment headers, headline gaps
  summary.json   the summary of scripts/analyze_best_results.py for OUTPUT_DIR
  runs/<run>/    results.json, config.json, metrics.jsonl and eval_test.json of every run (no checkpoints)
  bench.json     the benchmark JSON, when --bench is given (a directory's files read as one)

The date defaults to the newest run's sweep timestamp (or today, UTC); the setting to
"<device>-<tasks>-<corpus>". Writing the same record twice gives the same files. The
README table between `<!-- records:begin -->` and `<!-- records:end -->` is regenerated
from every results/records/*/record.json each time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from grassmann_flows.analysis.load import (  # noqa: E402
    PUBLISHED_JSON, REPO_ROOT, ResultsError, Run, display_path, json_safe, load_runs, replace_between_markers,
    run_facts,
)
from grassmann_flows.analysis.summary import OUR_SECTIONS, TaskSummary, load_published, summarize  # noqa: E402
from grassmann_flows.analysis.tables import fmt_gap, report_markdown, summary_json  # noqa: E402
from grassmann_flows.bench.results import BenchFileError, load_bench  # noqa: E402

RECORDS_DIR = REPO_ROOT / "results" / "records"
README = REPO_ROOT / "README.md"
INDEX_BEGIN, INDEX_END = "<!-- records:begin -->", "<!-- records:end -->"
RUN_FILES = ("results.json", "config.json", "metrics.jsonl", "eval_test.json")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _stamp_date(runs: list[Run]) -> str:
    """The date of the newest timestamped sweep directory the runs lie in, else today (UTC)."""
    stamps = [p.name for r in runs for p in r.path.parents if re.match(r"^\d{4}-\d{2}-\d{2}_", p.name)]
    return max(stamps)[:10] if stamps else dt.datetime.now(dt.timezone.utc).date().isoformat()


def default_setting(runs: list[Run]) -> str:
    """"<device>-<tasks>-<corpus>", e.g. "cuda-wikitext-full"."""
    facts = run_facts(runs)
    tasks = sorted({r.task for r in runs})
    return "-".join(["+".join(facts["devices"]), "+".join(tasks), "+".join(facts["corpora"])])


def label(runs: list[Run]) -> str:
    """How the numbers may be read, from the runs themselves."""
    facts = run_facts(runs)
    corpus = ("full corpus" if facts["corpora"] == ["full"]
              else "/".join(facts["corpora"]) + " corpus, NOT comparable with the paper")
    return (f"{corpus}; {'/'.join(map(str, facts['epochs']))} epochs; "
            f"seeds {', '.join(map(str, facts['seeds']))}; device {'/'.join(facts['devices'])}")


def environments(runs: list[Run]) -> list[dict]:
    """The distinct environment headers of the runs (git SHA, versions, GPU)."""
    seen: list[dict] = []
    for run in runs:
        env = run.data.get("env") or {}
        if env not in seen:
            seen.append(env)
    return seen


def headline(summaries: dict[str, TaskSummary]) -> list[dict]:
    """Every gap of our runs (best validation), for the records table."""
    out = []
    for task, summary in summaries.items():
        for section in OUR_SECTIONS:
            for gap in summary.gaps(section):
                if gap.grassmann.published is None:
                    d = gap.to_json()
                    out.append({"task": task, "pairing": gap.pairing, "seq_len": d["seq_len"],
                                "n_layers": d["n_layers"], "corpus": d["corpus"], "best_val": d["best_val"],
                                "seeds": f"{gap.grassmann.n_seeds}/{gap.transformer.n_seeds}"})
    return out


def write_record(output_dir: Path, records_dir: Path, *, setting: str | None, date: str | None,
                 command: str, bench: Path | None, note: str) -> Path:
    """Write the record of `output_dir` and return its directory."""
    for part in (setting, date):
        if part is not None and not _NAME.match(part):
            raise ResultsError(f"record name part {part!r} may hold only letters, digits, '.', '_' and '-'")
    runs = load_runs(output_dir)
    summaries = summarize(runs, load_published(PUBLISHED_JSON))
    setting = setting or default_setting(runs)
    date = date or _stamp_date(runs)
    record = records_dir / f"{date}_{setting}"
    if record.exists():
        shutil.rmtree(record)  # a record is rewritten whole, never merged with an older one
    for run in runs:
        target = record / "runs" / run.path.parent.relative_to(output_dir)
        target.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            if (run.path.parent / name).is_file():
                shutil.copyfile(run.path.parent / name, target / name)
    if bench is not None:
        if not bench.exists():
            raise ResultsError(f"benchmark file not found: {bench}")
        (record / "bench.json").write_text(json.dumps(load_bench(bench), indent=2) + "\n")
    summary = json_safe(summary_json(output_dir, PUBLISHED_JSON, runs, summaries))
    (record / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    meta = {"date": date, "setting": setting, "command": command, "note": note,
            "output_dir": display_path(output_dir), "label": label(runs), "n_runs": len(runs),
            "bench": bench.name if bench else None, "environments": environments(runs),
            "headline": headline(summaries)}
    (record / "record.json").write_text(json.dumps(json_safe(meta), indent=2, allow_nan=False) + "\n")
    env_lines = "\n".join(f"- `{json.dumps(env, sort_keys=True)}`" for env in meta["environments"])
    readme = [f"# Record {date}_{setting}", f"**{meta['label']}.**"]
    readme += [note] if note else []
    readme += ["## Command", f"```\n{command or '(not given)'}\n```",
               "## Environment (from the runs' results.json)", env_lines,
               "## Results", "Regenerate with `python scripts/analyze_best_results.py "
               f"{display_path(record / 'runs')}`.",
               report_markdown(output_dir, runs, summaries).split("\n", 1)[1].strip()]
    (record / "README.md").write_text("\n\n".join(readme) + "\n")
    return record


def index_table(records_dir: Path, readme: Path) -> str:
    """The README table of every record, newest first."""
    metas = [(json.loads(p.read_text()), p.parent) for p in records_dir.glob("*/record.json")] \
        if records_dir.is_dir() else []
    if not metas:
        return "No record has been written yet; `python scripts/make_record.py OUTPUT_DIR` writes one."
    rows = ["| record | what it is | runs | Grassmann/Transformer gap (best validation) |", "|---|---|---|---|"]
    for meta, path in sorted(metas, key=lambda m: (m[0]["date"], m[0]["setting"]), reverse=True):
        # Records in the repository are linked from its root (where README.md lives).
        inside = path.resolve().is_relative_to(REPO_ROOT)
        link = display_path(path) if inside else os.path.relpath(path, readme.parent)
        gaps = "; ".join(f"{g['task']} L={g['seq_len']} N={g['n_layers']} {g['pairing']}: "
                         f"{', '.join(fmt_gap(g['best_val']))} (seeds G/T {g['seeds']})"
                         for g in meta["headline"]) or "—"
        rows.append(f"| [{path.name}]({link}/) | {meta['label']} | {meta['n_runs']} | {gaps} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", nargs="?", type=Path, help="sweep directory to record")
    parser.add_argument("--setting", help="record name after the date (default: <device>-<tasks>-<corpus>)")
    parser.add_argument("--date", help="YYYY-MM-DD (default: the newest run's sweep timestamp, else today UTC)")
    parser.add_argument("--command", default="", help="the command that produced the runs")
    parser.add_argument("--bench", type=Path, help="benchmark JSON (or a directory of them) to keep with the record")
    parser.add_argument("--note", default="", help="one paragraph for the record's README")
    parser.add_argument("--records-dir", type=Path, default=RECORDS_DIR)
    parser.add_argument("--readme", type=Path, default=README, help="README whose records table is regenerated")
    parser.add_argument("--index-only", action="store_true", help="only regenerate the README table")
    args = parser.parse_args(argv)
    try:
        if not args.index_only:
            if args.output_dir is None:
                raise ResultsError("OUTPUT_DIR is required unless --index-only")
            record = write_record(args.output_dir, args.records_dir, setting=args.setting, date=args.date,
                                  command=args.command, bench=args.bench, note=args.note)
            print(f"wrote {display_path(record)}", file=sys.stderr)
        changed = replace_between_markers(args.readme, INDEX_BEGIN, INDEX_END,
                                          index_table(args.records_dir, args.readme))
        print(f"{'updated' if changed else 'unchanged:'} records table in {args.readme}", file=sys.stderr)
    except (ResultsError, BenchFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
