"""Decode speed of transformers' `.generate()` on the project's models, beside the project's own loop.

`generate_point` times `.generate()` producing the last `n_new` tokens before context C
(its cache filled as if C - n_new tokens had been decoded, as the decode benchmark fills
the state of its own loop), so the two are timed over the same positions with the same
state. `generate_table` puts the two side by side. What `.generate()` adds per token is
its own work: logits processors, stopping criteria, the growing id tensor, a host sync.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from ..models.backbone import StreamState
from ..models.lm import LanguageModel
from .modeling import GrassmannFlowsForCausalLM, StreamCache


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate_point(model: LanguageModel, B: int, C: int, n_new: int, fill_state: Callable[[StreamState, int], None],
                   repeats: int = 3) -> dict[str, Any]:
    """ms per token of greedy `.generate()` making the n_new tokens that end at context C.

    fill_state(state, n): puts a state at position n with random contents. Each call starts
    from a state at C - n_new and a prompt of C - n_new + 1 ids: `.generate()` feeds the one
    id the cache has not seen, then n_new - 1 generated ones, leaving the cache at C. One
    untimed call, then the median of `repeats` timed calls (wall clock, synchronised).
    Returns ms, tokens_per_s, state_mb (the cache at C), peak_mb (CUDA only), new_tokens.
    """
    device = model.backbone.tok_emb.weight.device
    hf = GrassmannFlowsForCausalLM.from_language_model(model).eval()
    start = C - n_new
    if start < 0:
        raise ValueError(f"cannot generate {n_new} tokens ending at context {C}")
    gen = torch.Generator().manual_seed(0)
    times, peak = [], None
    for i in range(1 + repeats):
        state = model.new_state(B, C)
        fill_state(state, start)
        cache = StreamCache(state)
        ids = torch.randint(0, model.cfg.vocab_size, (B, start + 1), generator=gen).to(device)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        hf.generate(ids, cache=cache, max_new_tokens=n_new, do_sample=False)
        _sync(device)
        if i:
            times.append((time.perf_counter() - t0) * 1e3 / n_new)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**20
        if cache.get_seq_length() != C:
            raise RuntimeError(f"the cache ended at {cache.get_seq_length()}, not at C={C}")
    ms = statistics.median(times)
    return {"ms": ms, "tokens_per_s": B / (ms / 1e3), "state_mb": cache.nbytes() / 2**20, "peak_mb": peak,
            "new_tokens": n_new, "repeats": repeats}


def generate_table(rows: list[dict[str, Any]], suffix: str = " .generate()") -> str:
    """Markdown: the project's loop and `.generate()` per (model, n_positions, B, C).

    rows: the decode benchmark's rows ("model", "n_positions", "B", "C", "ms", "tokens_per_s",
    "state_mb"); `.generate()`'s rows carry the model's name + `suffix`.
    """
    head = ["model", "n_positions", "B", "C", "own loop ms/token", ".generate() ms/token", ".generate() / own",
            "own loop tokens/s", ".generate() tokens/s", "own state MB", ".generate() state MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = {(r["model"], r.get("n_positions"), r["B"], r["C"]): r for r in rows}
    notes = []
    for (model, n_pos, B, C), g in by.items():
        if not model.endswith(suffix):
            continue
        kind = model.removesuffix(suffix)
        r = by.get((kind, n_pos, B, C), {})
        if "ms" not in r or "ms" not in g:
            reason = r.get("skipped") or r.get("error") or g.get("skipped") or g.get("error") or "not measured"
            notes.append(f"- {kind} B={B} C={C}: {reason}")
            continue
        lines.append("| " + " | ".join([
            kind, str(n_pos), str(B), str(C), f"{r['ms']:.2f}", f"{g['ms']:.2f}",
            f"{g['ms'] / r['ms']:.2f}×", f"{r['tokens_per_s']:.0f}", f"{g['tokens_per_s']:.0f}",
            f"{r['state_mb']:.3f}", f"{g['state_mb']:.3f}",
        ]) + " |")
    return "\n".join(lines + [""] + notes) + "\n"


__all__ = ["generate_point", "generate_table"]
