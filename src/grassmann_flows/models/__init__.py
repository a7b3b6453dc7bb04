"""Models: the Transformer baseline, the Grassmann LM, and from-scratch SNLI classifiers.

Entry points:
    build_model("grassmann", preset="paper", n_layers=12, mixer_impl="fast")
    build_classifier("transformer", n_layers=6)
Options are the fields of `ModelConfig` and `MixerConfig` (flat); a preset sets a
group of them and explicit options override the preset.
"""

from __future__ import annotations

from typing import Any

from .classifier import PairClassifier
from .config import MixerConfig, ModelConfig, apply_options, validate
from .lm import LanguageModel, count_parameters
from .presets import PRESETS, preset_options

__all__ = [
    "PRESETS", "LanguageModel", "MixerConfig", "ModelConfig", "PairClassifier",
    "build_classifier", "build_model", "classifier_config", "count_parameters", "model_from_config", "resolve_config",
]


def resolve_config(kind: str, preset: str = "paper", **options: Any) -> ModelConfig:
    """The fully resolved `ModelConfig` for `kind` under `preset` plus `options`."""
    if kind not in ("transformer", "grassmann"):
        raise ValueError(f"unknown model kind {kind!r}: expected 'transformer' or 'grassmann'")
    n_layers = int(options.get("n_layers", ModelConfig.n_layers))
    merged = {**preset_options(preset, kind, n_layers), **options}
    if kind == "transformer":
        # Mixer fields mean nothing to attention; keep the default so configs stay comparable.
        merged = {k: v for k, v in merged.items() if k not in MixerConfig.__dataclass_fields__}
    else:  # likewise attention's own dropout for the Grassmann model
        merged.pop("attn_dropout", None)
    return validate(apply_options(ModelConfig(kind=kind), **merged))


def model_from_config(cfg: ModelConfig, pooling: str = "mean") -> LanguageModel | PairClassifier:
    """Rebuild the module a checkpoint's config describes; `pooling` is a classifier's (its
    config's "classifier" entry), which a language model has none of."""
    return LanguageModel(validate(cfg)) if cfg.causal else PairClassifier(validate(cfg), pooling=pooling)


def build_model(kind: str, preset: str = "paper", **options: Any) -> LanguageModel:
    """A language model whose forward(input_ids (B, L)) returns logits (B, L, V)."""
    return LanguageModel(resolve_config(kind, preset, **options))


def classifier_config(kind: str, preset: str = "paper", **options: Any) -> ModelConfig:
    """The `ModelConfig` of an SNLI encoder: bidirectional, and the Grassmann encoder pairs
    in both directions unless `causal` or `pairing` is given."""
    options.setdefault("causal", False)
    if kind == "grassmann":
        options.setdefault("pairing", "both")
    return resolve_config(kind, preset, **options)


def build_classifier(kind: str, preset: str = "paper", pooling: str = "mean", **options: Any) -> PairClassifier:
    """An SNLI classifier whose forward(input_ids, attention_mask) returns (B, 3) logits
    (encoder: `classifier_config`)."""
    return PairClassifier(classifier_config(kind, preset, **options), pooling=pooling)
