"""Export a WikiText-2 run's best.pt as a Hugging Face model folder.

    python -m grassmann_flows.export_hf RUN_DIR OUT_DIR
    python -m grassmann_flows.export_hf RUN_DIR/best.pt OUT_DIR --overwrite

OUT_DIR gets config.json (model_type grassmann_flows_grassmann or
grassmann_flows_transformer), model.safetensors, generation_config.json and the run's
tokenizer files. After `import grassmann_flows`, transformers loads it without
trust_remote_code:

    AutoModelForCausalLM.from_pretrained(OUT_DIR), AutoTokenizer.from_pretrained(OUT_DIR)

The folder is written beside OUT_DIR and renamed into place once complete, then
loaded back and checked: its logits must equal the run's own model's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch

from .runs import cli, load_run


def export(run: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the HF folder of `run` (a run directory or a .pt path) to `out_dir`; returns it."""
    from .data.tokenizers import TOKENIZER_FILES_DIR, load_tokenizer
    from .hf.modeling import GrassmannFlowsForCausalLM

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"{out_dir} is not empty: choose a new folder, or pass --overwrite to replace it")
    model, meta, _ = load_run(run, {"task": "wikitext"}, "cpu")
    hf_model = GrassmannFlowsForCausalLM.from_language_model(model)
    tokenizer = meta["data"]["tokenizer"]
    load_tokenizer(tokenizer)  # an unknown name fails here, before anything is written

    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        hf_model.save_pretrained(tmp)
        shutil.copytree(TOKENIZER_FILES_DIR / tokenizer, tmp, dirs_exist_ok=True)  # the run's vendored files
        _check_export(tmp, model)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


@torch.no_grad()
def _check_export(folder: Path, model: torch.nn.Module) -> None:
    """Load `folder` through AutoModelForCausalLM and compare its logits with `model`'s."""
    from transformers import AutoModelForCausalLM

    from .hf import register

    register()
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    L = min(model.cfg.n_positions, 64)
    ids = torch.randint(0, model.cfg.vocab_size, (2, L), generator=torch.Generator().manual_seed(0))
    if not torch.equal(loaded(ids).logits, model(ids)):
        raise RuntimeError(f"the model loaded from {folder} does not reproduce the run's logits")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="WikiText-2 run directory (uses its best.pt) or a checkpoint path")
    p.add_argument("out_dir", help="folder to write (new or empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it has files")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = export(args.run, args.out_dir, args.overwrite)
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
