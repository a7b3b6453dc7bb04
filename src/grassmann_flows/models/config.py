"""Model configuration: every reading of the paper is a named field here.

The paper (arXiv 2512.19428) leaves many details open; each one is a field with
the allowed values listed, so a run's `config.json` says exactly which reading it
trained. `technical.md` gives the reasoning behind every default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

Kind = Literal["transformer", "grassmann"]
MixerImpl = Literal["naive", "fast", "fused"]

# Field -> allowed values, checked in `validate` so a typo fails at build time.
_CHOICES: dict[str, tuple[Any, ...]] = {
    "schedule": ("all", "per_layer"),
    "pairing": ("past", "future_literal", "both"),
    "norm_form": ("clamp", "sqrt_add"),
    "norm_order": ("normalize_first", "average_first"),
    "aggregation": ("mean", "sum"),
    "empty_value": ("zero", "bias"),
    "projection": ("shared", "per_offset"),
    "gate_output": ("blend", "residual"),
    "extra_proj": ("none", "g", "out", "in"),
    "mixer_impl": ("naive", "fast", "fused"),
    "kind": ("transformer", "grassmann"),
    "block": ("preln", "postln", "paper_postln"),
    "init": ("pytorch", "gpt2"),
}


@dataclass(frozen=True)
class MixerConfig:
    """The Causal Grassmann mixing layer of paper §3.2 and its open choices.

    reduced_dim: r, the width tokens are reduced to before pairing (paper: 32).
    offsets: the offset set W (paper: {1,2,4,8,12,16}) or, with schedule="per_layer",
        one offset per layer (paper's N=12 list (1,1,2,2,4,4,8,8,12,12,16,16)).
    schedule: "all" = every layer uses every offset (duplicates are a no-op for the
        mean); "per_layer" = layer l uses offsets[l] only (len(offsets) == n_layers).
    pairing: "past" pairs t with t-Delta (causal; what every reproduction does);
        "future_literal" pairs t with t+Delta as the paper's text reads (leaks the
        future: demonstration only); "both" uses both directions (bidirectional
        encoders for SNLI, where there is no future to hide).
    normalize, norm_eps, norm_form: p_hat = p / max(|p|, eps) ("clamp") or
        p / sqrt(|p|^2 + eps) ("sqrt_add"); the paper calls it optional, gives no eps.
    norm_order: "normalize_first" normalises each offset's Plücker vector then
        averages (paper); "average_first" averages raw vectors then normalises
        (the one public fused kernel).
    aggregation: "mean" over valid offsets (paper's formula) or "sum".
    empty_value: g_t where no offset is valid (t < min Delta): "zero" (bias added
        per offset then averaged) or "bias" (average the features, then project).
    projection: one W_plü shared by all offsets (paper, confirmed by its parameter
        counts) or one per offset.
    gate_output: "blend" alpha*h + (1-alpha)*g (paper) or "residual" h + alpha*g.
    mixer_norm: a LayerNorm inside the mixer after the gate (alphaXiv reproduction).
    extra_proj: one extra d x d Linear per mixer, or "none". The paper's 13.00M / 18.16M
        need exactly one. "g" projects g before the gate: W_plü -> W_g W_plü and
        b_plü -> W_g b_plü + b_g, a reparametrisation that leaves the function of
        the paper's equations unchanged. "out" acts on the mixer output (the blend,
        so the h path too); "in" on its input (so h in the blend is W_in h + b_in).
    mixer_impl: "naive" (literal per-offset reference), "fast" (exact collapsed rewrite),
        "fused" (Triton kernel of the collapsed rewrite); all three compute the same function.
        Configs written before the field was renamed call it `impl` (read by `from_dict`).
    """

    reduced_dim: int = 32
    offsets: tuple[int, ...] = (1, 2, 4, 8, 12, 16)
    schedule: str = "all"
    pairing: str = "past"
    normalize: bool = True
    norm_eps: float = 1e-6
    norm_form: str = "clamp"
    norm_order: str = "normalize_first"
    aggregation: str = "mean"
    empty_value: str = "zero"
    projection: str = "shared"
    gate_output: str = "blend"
    mixer_norm: bool = False
    extra_proj: str = "none"
    mixer_impl: str = "fast"

    @property
    def n_pluecker(self) -> int:
        """C(r, 2): the number of Plücker coordinates of a 2-plane in R^r."""
        return self.reduced_dim * (self.reduced_dim - 1) // 2


@dataclass(frozen=True)
class ModelConfig:
    """Backbone shared by both models (paper §3.1 and §4.1).

    block: "preln" x + f(LN x); "postln" LN(x + f(x)); "paper_postln" the paper's
        literal Grassmann block (blend -> LN -> dropout -> LN(h + FFN(h)), no
        residual around the mixer). For the Transformer, "paper_postln" = "postln".
    init: "pytorch" (module defaults) or "gpt2" (N(0, 0.02) weights, zero biases).
    dropout: the rate on the embedding output and on each block's mixer and FFN branch.
    attn_dropout: dropout on the attention probabilities (the Transformer only; a
        Grassmann model has no attention and keeps 0).
    ffn_dropout: dropout on the FFN hidden activations, after the GELU.
    n_positions: rows of the learned position table; the paper's 17.32M / 18.16M
        counts imply 128 rows even at block size 256.
    causal: False for the SNLI encoders (bidirectional attention, pairs both ways).
    """

    kind: str = "grassmann"
    vocab_size: int = 30522
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    d_ff: int = 1024
    dropout: float = 0.1
    attn_dropout: float = 0.0
    ffn_dropout: float = 0.0
    n_positions: int = 256
    block: str = "preln"
    init: str = "gpt2"
    causal: bool = True
    mixer: MixerConfig = field(default_factory=MixerConfig)

    def layer_offsets(self, layer: int) -> tuple[int, ...]:
        """The offsets layer `layer` pairs over, as a multiset (positive = past partner).

        Duplicates are kept: they are a no-op for the mean but count twice in a sum,
        and the naive reference loops over them literally as the reproductions do.
        """
        m = self.mixer
        offs = (m.offsets[layer],) if m.schedule == "per_layer" else tuple(m.offsets)
        if m.pairing == "future_literal":
            return tuple(-o for o in offs)
        if m.pairing == "both":
            return offs + tuple(-o for o in offs)
        return offs

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mixer"]["offsets"] = list(self.mixer.offsets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        if d.get("kind") == "transformer" and "attn_dropout" not in d:
            # Configs written before the field existed dropped attention probabilities at `dropout`.
            d["attn_dropout"] = d.get("dropout", cls.dropout)
        mixer = dict(d.pop("mixer", {}))
        if "impl" in mixer:  # the field's name in configs written before it became `mixer_impl`
            mixer["mixer_impl"] = mixer.pop("impl")
        if "offsets" in mixer:
            mixer["offsets"] = tuple(mixer["offsets"])
        return cls(**d, mixer=MixerConfig(**mixer))


def apply_options(cfg: ModelConfig, **options: Any) -> ModelConfig:
    """Return `cfg` with `options` applied; mixer fields may be given flat."""
    model_names = {f.name for f in fields(ModelConfig)} - {"mixer"}
    mixer_names = {f.name for f in fields(MixerConfig)}
    top = {k: v for k, v in options.items() if k in model_names}
    mix = {k: v for k, v in options.items() if k in mixer_names}
    unknown = set(options) - model_names - mixer_names
    if unknown:
        raise ValueError(f"unknown model option(s): {', '.join(sorted(unknown))}")
    if "offsets" in mix:
        mix["offsets"] = tuple(int(o) for o in mix["offsets"])
    return replace(cfg, **top, mixer=replace(cfg.mixer, **mix))


def validate(cfg: ModelConfig) -> ModelConfig:
    """Check every choice field and the cross-field rules; return `cfg`."""
    for obj in (cfg, cfg.mixer):
        for f in fields(obj):
            allowed = _CHOICES.get(f.name)
            if allowed is not None and getattr(obj, f.name) not in allowed:
                raise ValueError(f"{f.name}={getattr(obj, f.name)!r}: expected one of {allowed}")
    m = cfg.mixer
    for name in ("dropout", "attn_dropout", "ffn_dropout"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise ValueError(f"{name}={getattr(cfg, name)}: expected a rate in [0, 1)")
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"d_model={cfg.d_model} is not divisible by n_heads={cfg.n_heads}")
    if not m.offsets or any(o <= 0 for o in m.offsets):
        raise ValueError(f"offsets must be positive integers, got {m.offsets}")
    if m.schedule == "per_layer" and len(m.offsets) != cfg.n_layers:
        raise ValueError(
            f"schedule='per_layer' needs one offset per layer: got {len(m.offsets)} offsets "
            f"for n_layers={cfg.n_layers}"
        )
    if m.reduced_dim < 2:
        raise ValueError("reduced_dim must be at least 2 (a 2-plane needs two dimensions)")
    if cfg.kind == "grassmann" and cfg.causal and m.pairing == "both":
        raise ValueError("pairing='both' pairs with future tokens: only for non-causal encoders")
    return cfg
