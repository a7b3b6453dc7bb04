"""Named presets: the paper as written and the two designs public reproductions ran.

| preset              | what it is                                                          | published numbers it corresponds to |
|---------------------|---------------------------------------------------------------------|--------------------------------------|
| `paper`             | paper §3.2 literally: post-LN block with the blend as the only path  | paper Tables 1-2 (T 248.4/253.6 vs G 275.7/282.3 at N=6 L=128; T 235.2 vs G 261.1 at N=12 L=256), 13.00M / 18.16M params |
|                     | for h, one extra d x d projection of g per mixer (the counts),      |                                      |
|                     | all six offsets per layer at N != 12, one offset per layer from     |                                      |
|                     | (1,1,2,2,4,4,8,8,12,12,16,16) at N = 12 ("across depth")             |                                      |
| `preln_all_offsets` | all six offsets in every layer, pre-LN residual block around a      | alphaXiv reproduction: T 169.25 vs G 241.60 (N=12 L=256) |
|                     | mixer with its own LayerNorm                                         |                                      |
| `preln_per_layer`   | one offset per layer from the 12-entry schedule, pre-LN residual    | youdie006 reproduction: T 218.28 vs G 200.29 (N=12 L=256), README: https://github.com/youdie006/grassmann/blob/e8aa8c8f028daab1bce9992d5a7f4b5294de623d/README.md#L48-L51 |
|                     | block, average-then-project (g = b_plü where no offset is valid)    |                                      |

The Transformer baseline is pre-LN in every preset (the paper does not say; a
post-LN baseline is `block="postln"`). All presets use GPT-2 style N(0, 0.02)
initialisation (the paper is silent; both reproductions do this).

Dropout sites beyond the embedding and the block branches (`attn_dropout`,
`ffn_dropout`) are set for both models as each reproduction trains them: neither
drops attention probabilities, and only alphaXiv drops the FFN hidden activations.
`paper` drops neither, so both models have the same dropout sites (technical.md §2.2).
"""

from __future__ import annotations

from typing import Any

SIX = (1, 2, 4, 8, 12, 16)
TWELVE = (1, 1, 2, 2, 4, 4, 8, 8, 12, 12, 16, 16)
PRESETS = ("paper", "preln_all_offsets", "preln_per_layer")


def preset_options(preset: str, kind: str, n_layers: int) -> dict[str, Any]:
    """Options (flat, as for `build_model`) that a preset sets for `kind` at `n_layers`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: expected one of {PRESETS}")
    # Only alphaXiv's FFN (shared by both of its models) drops its hidden activations.
    ffn_dropout = 0.1 if preset == "preln_all_offsets" else 0.0
    if kind == "transformer":
        return {"block": "preln", "init": "gpt2", "attn_dropout": 0.0, "ffn_dropout": ffn_dropout}
    if preset == "paper":
        per_layer = n_layers == len(TWELVE)
        return {
            "block": "paper_postln", "init": "gpt2", "extra_proj": "g", "ffn_dropout": ffn_dropout,
            "offsets": TWELVE if per_layer else SIX,
            "schedule": "per_layer" if per_layer else "all",
        }
    if preset == "preln_all_offsets":
        return {
            "block": "preln", "init": "gpt2", "mixer_norm": True, "norm_eps": 1e-8,
            "ffn_dropout": ffn_dropout,
            "offsets": TWELVE if n_layers == len(TWELVE) else SIX, "schedule": "all",
        }
    if n_layers not in (len(SIX), len(TWELVE)):
        raise ValueError(f"preset 'preln_per_layer' needs n_layers of 6 or 12, got {n_layers}")
    return {
        "block": "preln", "init": "gpt2", "empty_value": "bias", "ffn_dropout": ffn_dropout,
        "offsets": TWELVE if n_layers == len(TWELVE) else SIX, "schedule": "per_layer",
    }
