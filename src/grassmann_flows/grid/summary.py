"""Summary: SUMMARY.md of a queue's output directory, from its queue.json and the runs' files."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any


def _fmt_s(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def run_rows(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run: the queue's record plus step time, tokens/s and the metric from its files."""
    rows = []
    for o in outcomes:
        row = dict(o)
        run_dir = Path(o["out_dir"]) if o.get("out_dir") else None
        results = run_dir / "results.json" if run_dir else None
        if results and results.is_file():
            r = json.loads(results.read_text())
            # the logged windows' ms/step (each process's first step, compilation included,
            # is left out of them, as of train_time_s)
            windows = []
            metrics = run_dir / "metrics.jsonl"
            if metrics.is_file():
                records = (json.loads(line) for line in metrics.read_text().splitlines())
                windows = [rec["step_ms"] for rec in records if rec.get("kind") == "step" and rec.get("step_ms")]
            row.update(run_status=r.get("status"), corpus=r.get("corpus"), epochs_run=len(r.get("epochs") or []),
                       step_ms=statistics.median(windows) if windows else None,
                       tokens_per_s=r.get("tokens_per_s"),
                       best_val=r.get("best_val_ppl", r.get("best_val_acc")),
                       test=(r.get("test") or {}).get("ppl", (r.get("test") or {}).get("acc")))
        rows.append(row)
    return rows


def write_summary(out_dir: Path) -> Path:
    """<out_dir>/SUMMARY.md from queue.json (and steps.tsv of the GPU window, when present)."""
    queue = json.loads((out_dir / "queue.json").read_text())
    rows = run_rows(queue["runs"])
    lines = [f"# Summary of {out_dir.name}", ""]
    corpora = sorted({r["corpus"] for r in rows if r.get("corpus")})
    if corpora:
        lines.append(f"- corpus: {', '.join(corpora)}" + (
            " (reduced-corpus results are not comparable with the paper's tables)" if "reduced" in corpora else ""))
    lines += [f"- {queue['slots']}", f"- wall-clock of the queue: {queue['wall_s']:.0f} s"
              + (f"; stopped: {queue['stop_reason']}" if queue.get("stop_reason") else "")]
    steps = out_dir / "steps.tsv"
    if steps.is_file():
        lines += ["", "## Steps", "", "| step | status | seconds |", "|---|---|---:|"]
        for line in steps.read_text().splitlines():
            name, status, seconds = line.split("\t")
            lines.append(f"| {name} | {status} | {float(seconds):.0f} |")
    lines += ["", "## Runs", "",
              "| run | stage | status | estimate s | train s | eval s | ms/step | tokens/s | epochs | best val | test |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        status = r["status"] + (f" ({r['note']})" if r.get("note") and r["status"] != "completed" else "")
        lines.append("| " + " | ".join([
            r["name"], r["stage"], status, _fmt_s(r.get("estimate_s")), _fmt_s(r.get("train_s")),
            _fmt_s(r.get("eval_s")), _fmt_s(r.get("step_ms")),
            "—" if r.get("tokens_per_s") is None else f"{r['tokens_per_s']:,.0f}",
            str(r.get("epochs_run", "—")), "—" if r.get("best_val") is None else f"{r['best_val']:.4g}",
            "—" if r.get("test") is None else f"{r['test']:.4g}"]) + " |")
    cut = [r["name"] for r in rows if r["status"] in ("cut", "not started")]
    lines += ["", f"Cut or not started ({len(cut)}): " + (", ".join(cut) if cut else "none")
              + ("; continue them with RESUME=1." if cut else ""), ""]
    path = out_dir / "SUMMARY.md"
    path.write_text("\n".join(lines))
    return path
