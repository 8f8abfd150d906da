"""The model registry: names -> constructors, ``build_model`` and ``list_models``."""
from __future__ import annotations

import difflib
import fnmatch
import inspect
from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn_or_name):
    """Register ``fn(fused=..., **kwargs) -> nn.Module`` under its own name (timm's habit:
    ``@register_model`` over ``def ascan_t(...)``, so grep finds every variant), or under a
    given name (``@register_model("name")``)."""
    def deco(fn: Callable[..., nn.Module], name: str) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn
    if callable(fn_or_name):
        return deco(fn_or_name, fn_or_name.__name__)
    return lambda fn: deco(fn, fn_or_name)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob ``pattern``, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def build_model(name: str, fused: bool = True, **kwargs) -> nn.Module:
    """Build a registered model.

    ``fused=True`` routes compute through ``ascan_kernels`` (fused impls where they can
    run, the eager reference otherwise, see ``ascan_kernels.trace``); ``fused=False``
    builds the plain PyTorch model with identical parameters. Classifier kwargs:
    ``num_classes``, ``in_chans``, ``drop_path_rate``, ``drop_rate``.
    """
    try:
        fn = _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list_models(), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}{hint}") from None
    if not isinstance(fused, bool):
        raise TypeError(f"build_model({name!r}): fused must be True or False, got {fused!r}")
    accepted = [p for p in inspect.signature(fn).parameters if p != "fused"]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, accepted, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(f"build_model({name!r}): unknown argument {', '.join(hints)}; "
                        f"{name} accepts {', '.join(accepted)}")
    return fn(fused=fused, **kwargs)
