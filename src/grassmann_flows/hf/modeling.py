"""transformers models around the project's `LanguageModel`, with its streaming state as the cache.

`GrassmannLMForCausalLM` and `TransformerLMForCausalLM` hold a `LanguageModel` (the very
module the training code builds, as `.model`) and add what `transformers` expects:
`from_pretrained` / `save_pretrained` (safetensors), `forward` returning
`CausalLMOutputWithPast` (a loss with `labels`), and `.generate()`.

The cache of `.generate()` is `StreamCache`: the project's own decoding state
(`LanguageModel.new_state`): for the Grassmann model a fixed window of the last
max|offset| reduced vectors per layer, whose size does not depend on the context length;
for the Transformer a KV cache. The prompt goes through the model in one call and each
new token in one call, as `grassmann_flows.generate` does, so greedy decoding gives the
same tokens. Written for the cache API of transformers 5 (the `cache` keyword of
`forward`, `generate` and the model outputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..data.wikitext import IGNORE_INDEX
from ..models.attention import KVCache
from ..models.backbone import StreamState, _gpt2_init
from ..models.config import validate
from ..models.lm import LanguageModel
from ..models.mixer import GrassmannMixer
from ..ops.wedge_project import antisymmetrizer
from .configuration import GrassmannFlowsConfig, GrassmannLMConfig, TransformerLMConfig

if "cache" not in CausalLMOutputWithPast.__dataclass_fields__:
    import transformers

    raise ImportError(f"grassmann_flows.hf needs the `cache` keyword API of transformers 5; "
                      f"transformers {transformers.__version__} is installed")


class StreamCache(Cache):
    """The project's decoding state (`StreamState`) as a transformers `Cache`.

    `state.layers` are the per-layer states (`KVCache` for attention, `RingState` for the
    Grassmann mixer); `state.position` is the number of tokens seen. The model reads and
    advances the state itself, so the Cache's own update path is not used. Beam search
    reorders it; rolling it back (`crop`, as assisted decoding needs) is not supported.
    """

    def __init__(self, state: StreamState) -> None:
        super().__init__(layers=state.layers)
        self.state = state

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.state.position

    def get_max_length(self, layer_idx: int | None = None) -> int:
        """The KV cache's capacity; -1 (no limit of its own) for the Grassmann window."""
        kv = [layer.k.shape[2] for layer in self.state.layers if isinstance(layer, KVCache)]
        return min(kv) if kv else -1

    def nbytes(self) -> int:
        """Bytes the per-layer states hold at the current position (`StreamState.nbytes`)."""
        return self.state.nbytes()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep rows `beam_idx` (beam search)."""
        for layer in self.state.layers:
            if isinstance(layer, KVCache):
                layer.k, layer.v = layer.k[beam_idx.to(layer.k.device)], layer.v[beam_idx.to(layer.v.device)]
            else:
                layer.z = layer.z[beam_idx.to(layer.z.device)]

    def _unsupported(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError("the streaming state cannot be cropped, reset or re-batched: "
                                  "start a new cache (model.new_cache) instead")

    crop = reset = batch_repeat_interleave = batch_select_indices = _unsupported

    @property
    def batch_size(self) -> int:
        first = self.state.layers[0]
        return (first.k if isinstance(first, KVCache) else first.z).shape[0]

    is_compileable = False
    is_croppable = False
    is_initialized = True


class GrassmannFlowsForCausalLM(PreTrainedModel, GenerationMixin):
    """Common base of the two models: input_ids (B, L) -> logits (B, L, V) of `.model`."""

    config_class = GrassmannFlowsConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]

    def __init__(self, config: GrassmannFlowsConfig) -> None:
        super().__init__(config)
        cfg = validate(config.to_model_config())
        if not cfg.causal:
            raise ValueError("causal=False describes an SNLI encoder, not a language model")
        self.model = LanguageModel(cfg)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: torch.nn.Module) -> None:
        """The project's own initialisation, for what a weights file does not hold.

        from_pretrained builds the model on the meta device and fills only what the file
        holds: here that is the mixer's antisymmetriser (a non-persistent buffer), and
        every weight of a model built from a config alone.
        """
        if isinstance(module, GrassmannMixer):
            module.antisym.copy_(antisymmetrizer(module.cfg.reduced_dim))
        elif isinstance(module, (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm)):
            module.reset_parameters()
            if self.config.init == "gpt2":
                _gpt2_init(module)

    @classmethod
    def from_language_model(cls, model: LanguageModel) -> "GrassmannFlowsForCausalLM":
        """The transformers model of `model`'s kind around `model` itself (shared, not copied)."""
        config = GrassmannFlowsConfig.from_model_config(model.cfg)
        with torch.device("meta"):  # its own LanguageModel is replaced at once: allocate nothing
            wrapper = MODEL_CLASSES[model.cfg.kind](config)
        wrapper.model = model
        return wrapper.train(model.training)

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.backbone.tok_emb

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is the model's own state (StreamCache), never a DynamicCache

    def new_cache(self, batch_size: int, capacity: int | None = None) -> StreamCache:
        """An empty cache for `batch_size` sequences of up to `capacity` positions (default
        n_positions; only the Transformer's KV cache depends on it)."""
        return StreamCache(self.model.new_state(batch_size, capacity))

    def forward(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
        cache: StreamCache | None = None, use_cache: bool | None = None, labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
    ) -> CausalLMOutputWithPast | tuple:
        """input_ids (B, L) -> logits (B, L, V), as `LanguageModel.forward`.

        cache: a `StreamCache` that has seen the previous tokens; input_ids continue them
            and it is advanced past them. use_cache=True without one starts a new one.
        attention_mask: only all-ones is accepted (the streaming state has no padding).
        labels: (B, L) ids; the loss is the mean cross-entropy of position t predicting
            labels[t + 1], ignoring -100, as transformers' causal LMs do.
        """
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("padded batches are not supported (the decoding state has no padding mask): "
                             "give prompts of one length, or generate them one at a time")
        if cache is None and use_cache:
            cache = self.new_cache(input_ids.shape[0])
        logits = self.model(input_ids, state=None if cache is None else cache.state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                   ignore_index=IGNORE_INDEX)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)
        return out if return_dict is not False else out.to_tuple()

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, batch_size,
                                      max_cache_length) -> None:
        """A `StreamCache` for the expanded batch, sized to the longest sequence it will see."""
        super()._prepare_cache_for_generation(generation_config, model_kwargs, generation_mode, batch_size,
                                              max_cache_length)
        if generation_config.use_cache and model_kwargs.get("cache") is None:
            rows = batch_size * max(generation_config.num_beams, generation_config.num_return_sequences)
            model_kwargs["cache"] = self.new_cache(rows, max_cache_length)

    def _validate_generated_length(self, generation_config, input_ids_length, has_default_max_length) -> None:
        """Refuse, before generating, a length the position table cannot hold.

        A sequence may reach n_positions + 1 tokens: the last one is predicted, never fed.
        """
        super()._validate_generated_length(generation_config, input_ids_length, has_default_max_length)
        n_positions = self.config.n_positions
        if input_ids_length > n_positions:
            raise ValueError(f"the prompt has {input_ids_length} tokens, more than the model's position table "
                             f"(n_positions={n_positions})")
        if generation_config.max_length > n_positions + 1:
            raise ValueError(
                f"generating up to {generation_config.max_length} tokens goes past the model's position table "
                f"(n_positions={n_positions}): with a prompt of {input_ids_length} tokens, ask for at most "
                f"max_new_tokens={n_positions + 1 - input_ids_length}")


class GrassmannLMForCausalLM(GrassmannFlowsForCausalLM):
    """The Grassmann language model; its cache has the same size at every position."""

    config_class = GrassmannLMConfig


class TransformerLMForCausalLM(GrassmannFlowsForCausalLM):
    """The Transformer baseline; its cache is a KV cache that grows with the context."""

    config_class = TransformerLMConfig


MODEL_CLASSES: dict[str, type[GrassmannFlowsForCausalLM]] = {
    "grassmann": GrassmannLMForCausalLM, "transformer": TransformerLMForCausalLM,
}

__all__ = ["GrassmannFlowsForCausalLM", "GrassmannLMForCausalLM", "MODEL_CLASSES", "StreamCache",
           "TransformerLMForCausalLM"]
