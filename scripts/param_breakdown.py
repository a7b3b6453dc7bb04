#!/usr/bin/env python
"""Parameter count per component of the paper's language models, as committed JSON.

    python scripts/param_breakdown.py            # writes results/params/breakdown.json
    python scripts/param_breakdown.py --print    # prints it instead

Both models are built with the `paper` preset at the paper's two settings (N=6, L=128
and N=12, L=256) and the 128-row position table its counts imply (see
scripts/count_params.py). Each distinct parameter is assigned to one component by its
module name; the components sum to the model's exact count, which the script checks.
`scripts/visualize_results.py` draws `images/param_breakdown.png` from the JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from grassmann_flows.models import build_model, count_parameters  # noqa: E402

OUT = REPO_ROOT / "results" / "params" / "breakdown.json"
SETTINGS = ((6, 128), (12, 256))
PAPER_POSITIONS = 128
# (component, pattern on the parameter name); the first match wins.
COMPONENTS = (
    ("token embedding (tied LM head)", r"tok_emb\."),
    ("position table", r"pos_emb\."),
    ("attention QKV", r"mixer\.qkv\."),
    ("attention output W_o", r"mixer\.out\."),
    ("W_red (d -> r)", r"mixer\.reduce\."),
    ("W_plu (C(r,2) -> d)", r"mixer\.proj\."),
    ("gate W_gate (2d -> d)", r"mixer\.gate\."),
    ("extra d x d projection", r"mixer\.\w*proj\w*\.(weight|bias)$"),
    ("mixer LayerNorm", r"mixer\.\w*norm"),
    ("FFN", r"\.ffn\."),
    ("block LayerNorms", r"blocks\.\d+\.norm"),
    ("final LayerNorm", r"norm"),
)


def component(name: str) -> str:
    """The component a parameter belongs to, by its module path."""
    for label, pattern in COMPONENTS:
        if re.search(pattern, name):
            return label
    raise ValueError(f"parameter {name!r} matches no component; extend COMPONENTS")


def breakdown(kind: str, n_layers: int) -> dict[str, int]:
    """{component: count} of the `paper` preset LM; sums to its exact parameter count."""
    model = build_model(kind, preset="paper", n_layers=n_layers, n_positions=PAPER_POSITIONS)
    parts: dict[str, int] = {}
    for name, p in model.named_parameters():  # named_parameters yields a tied weight once
        parts[component(name)] = parts.get(component(name), 0) + p.numel()
    assert sum(parts.values()) == count_parameters(model), "components do not sum to the count"
    return parts


def rows() -> list[dict]:
    return [{"model": kind, "n_layers": n, "block_size": L, "n_positions": PAPER_POSITIONS,
             "total": sum(parts.values()), "components": parts}
            for n, L in SETTINGS for kind in ("transformer", "grassmann")
            for parts in [breakdown(kind, n)]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--print", action="store_true", help="print the JSON instead of writing it")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    doc = {"generated_by": "scripts/param_breakdown.py", "preset": "paper", "rows": rows()}
    text = json.dumps(doc, indent=2) + "\n"
    if args.print:
        print(text, end="")
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
