"""transformers configs of the two language models: the project's `ModelConfig`, field for field.

Each model kind has its own `model_type`, so `AutoConfig` and `AutoModelForCausalLM`
tell them apart from a folder's config.json alone. The fields are generated from
`ModelConfig` (the mixer's options as one dict), so a field added there is exported too.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from transformers import PretrainedConfig

from ..models.config import MixerConfig, ModelConfig

MODEL_TYPES = {"grassmann": "grassmann_flows_grassmann", "transformer": "grassmann_flows_transformer"}


def _model_fields() -> dict[str, Any]:
    """ModelConfig's fields (all but `kind`) as class-body annotations and defaults."""
    names = [f for f in dataclasses.fields(ModelConfig) if f.name != "kind"]
    ns: dict[str, Any] = {"__annotations__": {f.name: (dict if f.name == "mixer" else f.type) for f in names}}
    for f in names:
        if f.name == "mixer":  # a dict in config.json; offsets become a list
            ns["mixer"] = dataclasses.field(default_factory=lambda: ModelConfig().to_dict()["mixer"])
        else:
            ns[f.name] = f.default
    return ns


class GrassmannFlowsConfig(PretrainedConfig):
    """Common base of the two configs; `to_model_config()` gives the project's `ModelConfig`.

    The standard names (hidden_size, num_hidden_layers, num_attention_heads,
    intermediate_size, max_position_embeddings) read the project's fields.
    """

    kind: ClassVar[str] = ""
    attribute_map: ClassVar[dict[str, str]] = {
        "hidden_size": "d_model", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
        "intermediate_size": "d_ff", "max_position_embeddings": "n_positions",
    }
    # The class body's namespace: ModelConfig's fields become this dataclass's fields here,
    # generated rather than listed again, so the two cannot drift apart.
    locals().update(_model_fields())

    def to_model_config(self) -> ModelConfig:
        """The `ModelConfig` these fields describe (not validated: building the model does that)."""
        names = {f.name for f in dataclasses.fields(ModelConfig)} - {"kind"}
        return ModelConfig.from_dict({"kind": self.kind, **{n: getattr(self, n) for n in names}})

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, **kwargs: Any) -> "GrassmannFlowsConfig":
        """The config of `cfg`'s kind holding `cfg` (kwargs: other PretrainedConfig fields)."""
        config_class = CONFIG_CLASSES.get(cfg.kind)
        if config_class is None:
            raise ValueError(f"unknown model kind {cfg.kind!r}: expected one of {', '.join(CONFIG_CLASSES)}")
        fields = cfg.to_dict()
        fields.pop("kind")
        return config_class(**fields, **kwargs)


class GrassmannLMConfig(GrassmannFlowsConfig):
    """The attention-free Grassmann (Plücker) language model."""

    model_type: ClassVar[str] = MODEL_TYPES["grassmann"]
    kind: ClassVar[str] = "grassmann"


class TransformerLMConfig(GrassmannFlowsConfig):
    """The project's Transformer baseline (the same backbone with attention as its mixer)."""

    model_type: ClassVar[str] = MODEL_TYPES["transformer"]
    kind: ClassVar[str] = "transformer"


CONFIG_CLASSES: dict[str, type[GrassmannFlowsConfig]] = {"grassmann": GrassmannLMConfig,
                                                          "transformer": TransformerLMConfig}

__all__ = ["CONFIG_CLASSES", "GrassmannFlowsConfig", "GrassmannLMConfig", "MODEL_TYPES", "MixerConfig",
           "TransformerLMConfig"]
