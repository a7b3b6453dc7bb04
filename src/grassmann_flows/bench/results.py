"""Reading the benchmark's JSON back: loading, GPU files, Grassmann/attention ratios.

Used keys: "env" ("gpu", "device", "date"); "mixer": rows of one mixing layer with "L",
"layer" (attention / grassmann-<impl>), "ms" and "peak_mb"; "model": training-step rows
with "L", "N", "B", "model" (transformer / grassmann-<impl>), "mode", "ms" and
"tokens_per_s". Rows that were skipped or failed carry no "ms" and are left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..utils.paths import REPO_ROOT, display_path

BENCH_DIR = REPO_ROOT / "results" / "bench"


class BenchFileError(RuntimeError):
    """A benchmark JSON that cannot be read; the analysis scripts report it as one line."""


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BenchFileError(f"{path}: cannot read benchmark JSON ({err})") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("mixer"), list) or not isinstance(doc.get("model"), list):
        raise BenchFileError(f"{path}: expected the JSON of scripts/benchmark.py (keys env, mixer, model)")
    return doc


def load_bench(path: Path) -> dict[str, Any]:
    """A benchmark JSON as written by `scripts/benchmark.py`, or a directory of them.

    A directory is one benchmark split over several calls (scripts/gpu_window.sh times the
    mixer, the eager and the compiled models apart, so that a cut keeps what came before):
    its JSON files, at any depth, are read as one, with the first file's environment.
    """
    if not path.is_dir():
        return _read(path)
    files = sorted(path.rglob("*.json"))
    if not files:
        raise BenchFileError(f"{path}: no benchmark JSON in this directory")
    docs = [_read(p) for p in files]
    return {**docs[0], "sources": [display_path(p) for p in files],
            **{part: [row for doc in docs for row in doc.get(part) or []] for part in ("mixer", "model", "decode")}}


def gpu_bench_files(bench_dir: Path = BENCH_DIR) -> list[Path]:
    """The benchmarks under `bench_dir` that were measured on a GPU, by name: its JSON files
    and its directories (one split benchmark each, see `load_bench`).

    A decode-only run (`--only decode`) has no mixer or model rows and is left out.
    """
    if not bench_dir.is_dir():
        return []
    docs = {p: load_bench(p) for p in sorted(bench_dir.iterdir())
            if p.suffix == ".json" or (p.is_dir() and any(p.rglob("*.json")))}
    return [p for p, doc in docs.items() if (doc.get("env") or {}).get("gpu") and (doc["mixer"] or doc["model"])]


def mixer_ratios(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per L and Grassmann implementation: its layer time over attention's at the same L."""
    timed = [r for r in doc["mixer"] if r.get("ms") is not None]
    attention = {r["L"]: r["ms"] for r in timed if r["layer"] == "attention"}
    return [{"L": r["L"], "layer": r["layer"], "ms": r["ms"], "attention_ms": attention[r["L"]],
             "ratio": r["ms"] / attention[r["L"]]}
            for r in sorted(timed, key=lambda r: (r["layer"], r["L"]))
            if r["layer"] != "attention" and r["L"] in attention]


def model_ratios(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per setting and mode: each Grassmann model's step time over the Transformer's."""
    timed = [r for r in doc["model"] if r.get("ms") is not None]
    setting = lambda r: (r["L"], r["N"], r["B"], r["mode"])  # noqa: E731
    transformer = {setting(r): r["ms"] for r in timed if r["model"] == "transformer"}
    return [{"L": r["L"], "N": r["N"], "B": r["B"], "mode": r["mode"], "model": r["model"], "ms": r["ms"],
             "transformer_ms": transformer[setting(r)], "ratio": r["ms"] / transformer[setting(r)]}
            for r in sorted(timed, key=lambda r: (setting(r), r["model"]))
            if r["model"] != "transformer" and setting(r) in transformer]


def bench_markdown(path: Path) -> str:
    """Markdown tables of the mixer and model step-time ratios of one benchmark file."""
    doc = load_bench(path)
    env = doc.get("env") or {}
    out = [f"`{display_path(path)}`: {env.get('gpu') or env.get('device', '?')}, {env.get('date', '?')}, "
           f"torch {env.get('torch', '?')}, commit {str(env.get('git_sha') or '?')[:7]}."]
    mixer = mixer_ratios(doc)
    if mixer:
        out.append("| mixing layer | L | ms (fwd+bwd) | attention ms | ratio to attention |\n|---|---|---|---|---|\n"
                   + "\n".join(f"| {r['layer']} | {r['L']} | {r['ms']:.3f} | {r['attention_ms']:.3f} | "
                               f"{r['ratio']:.2f}× |" for r in mixer))
    model = model_ratios(doc)
    if model:
        out.append("| model | L | N | B | mode | step ms | Transformer step ms | ratio |\n"
                   "|---|---|---|---|---|---|---|---|\n"
                   + "\n".join(f"| {r['model']} | {r['L']} | {r['N']} | {r['B']} | {r['mode']} | {r['ms']:.2f} | "
                               f"{r['transformer_ms']:.2f} | {r['ratio']:.2f}× |" for r in model))
    return "\n\n".join(out)
