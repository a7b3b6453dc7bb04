"""Hugging Face `transformers` integration: AutoConfig / AutoModelForCausalLM for both models.

    import grassmann_flows
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("exported/")   # python -m grassmann_flows.export_hf
    tok = AutoTokenizer.from_pretrained("exported/")
    ids = tok("The tower is", add_special_tokens=False, return_tensors="pt").input_ids
    print(tok.decode(model.generate(ids, max_new_tokens=20, do_sample=False)[0]))

`import grassmann_flows` registers the two model types lazily: importing transformers'
model classes takes seconds, which no training or evaluation command should pay. The
registration runs when transformers' auto classes are first imported (the config types
with `transformers.models.auto.configuration_auto`, the model classes with
`transformers.models.auto.modeling_auto`), or at once if they already are. `register()`
does it explicitly. The classes live in `grassmann_flows.hf.configuration` and
`grassmann_flows.hf.modeling`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType


def register_configs() -> None:
    """Register both config classes with AutoConfig (idempotent)."""
    from transformers import AutoConfig

    from .configuration import CONFIG_CLASSES

    for config_class in CONFIG_CLASSES.values():
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)


def register_models() -> None:
    """Register both model classes with AutoModelForCausalLM (idempotent)."""
    from transformers import AutoModelForCausalLM

    from .modeling import MODEL_CLASSES

    for model_class in MODEL_CLASSES.values():
        AutoModelForCausalLM.register(model_class.config_class, model_class, exist_ok=True)


def register() -> None:
    """Register both models with AutoConfig and AutoModelForCausalLM now."""
    register_configs()
    register_models()


# transformers module -> the registration that needs it
_HOOKS: dict[str, Callable[[], None]] = {
    "transformers.models.auto.configuration_auto": register_configs,
    "transformers.models.auto.modeling_auto": register_models,
}


def _run(hook: Callable[[], None]) -> None:
    """Run a registration from an import hook: a failure warns instead of breaking the import."""
    try:
        hook()
    except Exception as e:  # noqa: BLE001 (an old transformers, ...): the user's import must still work
        import warnings

        warnings.warn(f"grassmann_flows: the transformers integration is unavailable: {e}", stacklevel=2)


class _RegisterAfterImport:
    """A meta path finder that finds nothing itself: it wraps the loader of the modules in
    `_HOOKS` so that their registration runs right after they are executed. (Not derived
    from importlib.abc.MetaPathFinder: importing that costs more than all the rest.)"""

    def find_spec(self, fullname: str, path: object, target: ModuleType | None = None):  # noqa: ANN201
        hook = _HOOKS.get(fullname)
        if hook is None:
            return None
        for finder in sys.meta_path:  # the finders after this one, as the import system would ask them
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_module(module)
            _run(hook)

        spec.loader.exec_module = exec_then_register  # this module's loader object only
        return spec


def install() -> None:
    """Register now what transformers has already imported; hook the rest (once)."""
    for name, hook in _HOOKS.items():
        if name in sys.modules:
            _run(hook)
    if not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


__all__ = ["install", "register", "register_configs", "register_models"]
