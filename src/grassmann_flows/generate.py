"""Generate text from a WikiText-2 run's best.pt, one token at a time through a streaming state.

    python -m grassmann_flows.generate RUN_DIR --prompt "The tower is" --max-new-tokens 50
    python -m grassmann_flows.generate RUN_DIR --prompt "..." --temperature 0.8 --top-k 40 --seed 1
    python -m grassmann_flows.generate RUN_DIR --prompt "..." --temperature 0     # greedy

Both models decode incrementally: the Transformer through a KV cache (its state grows
with the context), the Grassmann model through a fixed window of the last max|offset|
reduced vectors per layer (its state has the same size at every position). The prompt
is encoded with the run's tokenizer, without special tokens, as the training stream is.
Generation stops at the model's position table (n_positions) and says so.
"""

from __future__ import annotations

import argparse
import sys

import torch

from .models import LanguageModel
from .runs import cli, load_run
from .training import resolve_device


@torch.no_grad()
def incremental_logits(model: LanguageModel, ids: torch.Tensor) -> torch.Tensor:
    """Logits (B, L, V) of ids (B, L), fed one token at a time through a fresh state.

    Equals `model(ids)` (up to rounding) for every model that can stream; raises
    ValueError with the reason for one that cannot (pairing with the future).
    """
    state = model.new_state(ids.shape[0], ids.shape[1])
    return torch.cat([model(ids[:, t:t + 1], state=state) for t in range(ids.shape[1])], dim=1)


def sample_next(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next tokens (B,) from the last position's logits (B, V).

    temperature 0 is greedy (argmax); top_k keeps the k most likely tokens before sampling.
    """
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: LanguageModel, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
    top_k: int | None = None, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, bool]:
    """Continue prompt (B, L0) by up to `max_new_tokens` tokens.

    The prompt goes through the model in one call (it fills the state), then each new
    token in one call. Returns (ids (B, L0 + n), hit_limit): hit_limit is True when
    generation stopped early because the next token would need a position beyond the
    position table (a sequence can reach n_positions + 1 tokens: the last one is
    predicted, never fed).
    """
    n_positions = model.cfg.n_positions
    L0 = prompt.shape[1]
    if L0 == 0:
        raise ValueError("the prompt is empty: give at least one token")
    if L0 > n_positions:
        raise ValueError(
            f"the prompt has {L0} tokens, more than the model's position table (n_positions={n_positions})"
        )
    n_new = min(max_new_tokens, n_positions + 1 - L0)
    state = model.new_state(prompt.shape[0], n_positions)
    ids = [prompt]
    logits = model(prompt, state=state)[:, -1]
    for i in range(n_new):
        ids.append(sample_next(logits, temperature, top_k, generator)[:, None])
        if i + 1 < n_new:
            logits = model(ids[-1], state=state)[:, -1]
    return torch.cat(ids, dim=1), n_new < max_new_tokens


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory (uses its best.pt) or a checkpoint path")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    p.add_argument("--device", default="auto")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    if not args.prompt.strip():
        raise ValueError("the prompt is empty: give some text with --prompt")
    device = resolve_device(args.device)
    model, meta, ckpt = load_run(args.run, {"task": "wikitext"}, device)
    from .data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(meta["data"]["tokenizer"])
    prompt_ids = tokenizer(args.prompt, add_special_tokens=False)["input_ids"]
    prompt = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    ids, hit_limit = generate(model, prompt, args.max_new_tokens, args.temperature, args.top_k, generator)
    print(tokenizer.decode(ids[0].tolist()), flush=True)
    if hit_limit:
        print(f"stopped after {ids.shape[1] - prompt.shape[1]} new tokens: the sequence filled the model's "
              f"position table (n_positions={model.cfg.n_positions})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
