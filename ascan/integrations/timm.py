"""The AsCAN classifiers in timm's model registry.

    import ascan, timm
    model = timm.create_model("ascan_t", num_classes=10, fused=True)
    backbone = timm.create_model("ascan_t", features_only=True, out_indices=(1, 2, 3))
    timm.list_models("ascan*")   # ['ascan_b', 'ascan_l', 'ascan_s', 'ascan_t']

With timm installed, ``import ascan`` calls :func:`register_when_timm_is_imported`: the
classifiers (``ascan.models.classifier.CONFIGS``) join timm's registry as soon as timm is
imported, before or after ascan, but importing ascan never imports timm itself (timm
imports torchvision, which imports ``torch._dynamo`` and Triton: seconds, and ``import
ascan`` stays cheap). :func:`status` says whether they are registered, and if not why.

The model is ascan's own (``ascan.build_model``), which carries timm's model contract
itself; ``timm.create_model`` adds timm's ``pretrained_cfg``, ``features_only`` (timm's
``FeatureGetterNet`` over ``forward_intermediates``) and ``checkpoint_path``. Model
arguments: those of ``ascan.build_model`` (``fused``, ``num_classes``, ``in_chans``,
``drop_path_rate``, ``drop_rate``, ``global_pool``), plus timm's ``device`` and ``dtype``.

No trained weights exist for any AsCAN variant: ``pretrained=True`` raises unless a
weight source is given (``pretrained_cfg_overlay=dict(file=...)``, timm's train.py
``--pretrained-path``).

This module imports timm only inside functions (timm is optional).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import sys
import warnings

import torch

from ..models.classifier import CONFIGS, default_pretrained_cfg
from ..models.registry import build_model

__all__ = ["TIMM_MODELS", "register_with_timm", "register_when_timm_is_imported", "status"]

TIMM_MODELS = tuple(sorted(CONFIGS))

# features_only: timm's getter (forward_intermediates) over the four stage outputs; timm's
# default out_indices (0..4) assumes five feature levels.
FEATURE_CFG = dict(feature_cls="getter", out_indices=(0, 1, 2, 3))

_status = "not registered with timm yet: the models register when timm is imported"
default_cfgs: dict = {}  # timm's DefaultCfg per model, filled by register_with_timm


def status() -> str:
    """"registered with timm", or why the models are not (yet) in timm's registry."""
    return _status


# --------------------------------------------------------------------------- entrypoints
def _construct(name: str, device=None, dtype: torch.dtype | None = None, **kwargs) -> torch.nn.Module:
    """``model_cls`` for timm's builder: ascan's constructor (whose errors name the model and
    an unknown argument), built on ``device`` and cast to ``dtype`` as timm's models accept."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build_model(name, **kwargs)
    return model if dtype is None else model.to(dtype)


def _no_weights_error(name: str) -> RuntimeError:
    return RuntimeError(
        f"{name}: no pretrained weights exist for AsCAN (none have been trained or published, for timm or "
        f"elsewhere); use pretrained=False for a randomly initialised model, or load your own checkpoint: "
        f"timm.create_model({name!r}, checkpoint_path=...) or pretrained=True with "
        f"pretrained_cfg_overlay=dict(file=...)")


def _entrypoint(name: str):
    def create(pretrained: bool = False, **kwargs) -> torch.nn.Module:
        from timm.models import build_model_with_cfg, resolve_pretrained_cfg

        if pretrained:
            # timm would build the model first and then fail on the missing URL; say why, up front.
            cfg = resolve_pretrained_cfg(name, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                         pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
            if not (cfg.has_weights or cfg.state_dict):
                raise _no_weights_error(name)
        feature_cfg = {**FEATURE_CFG, **(kwargs.pop("feature_cfg", None) or {})}
        return build_model_with_cfg(functools.partial(_construct, name), name, pretrained,
                                    feature_cfg=feature_cfg, **kwargs)

    create.__name__ = create.__qualname__ = name  # timm registers an entrypoint under its __name__
    create.__doc__ = (f"timm entrypoint for AsCAN {name} (``ascan.build_model({name!r}, ...)``); "
                      "no pretrained weights exist.")
    return create


for _name in TIMM_MODELS:
    globals()[_name] = _entrypoint(_name)
del _name


# --------------------------------------------------------------------------- registration
def register_with_timm() -> None:
    """Add every AsCAN classifier to timm's registry (imports timm; a second call does nothing).

    timm's ``register_model`` reads the entrypoint's module for ``default_cfgs``: the
    pretrained cfgs of ``ascan.models.classifier.default_pretrained_cfg``, none with weights.
    """
    global default_cfgs, _status
    if _status == "registered with timm":
        return
    from timm.models import generate_default_cfgs, register_model

    default_cfgs = generate_default_cfgs({n: default_pretrained_cfg(CONFIGS[n]) for n in TIMM_MODELS})
    for name in TIMM_MODELS:
        register_model(globals()[name])
    _status = "registered with timm"


def _register_or_warn() -> None:
    """Registration runs inside someone's ``import timm``: a failure here must not fail that."""
    global _status
    try:
        register_with_timm()
    except Exception as e:
        _status = f"not registered with timm: {type(e).__name__}: {e}"
        warnings.warn(f"ascan: the AsCAN models are {_status}", RuntimeWarning, stacklevel=2)


class _RegisteringLoader(importlib.abc.Loader):
    """timm's own loader, and the registration once timm's package has run."""

    def __init__(self, loader: importlib.abc.Loader, finder: "_AfterTimmImport"):
        self.loader = loader
        self.finder = finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        global _status
        # From here on timm's module shows its own loader, as if no hook had been there.
        module.__spec__.loader = module.__loader__ = self.loader
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self.finder)
        try:
            self.loader.exec_module(module)
        except BaseException as e:  # timm's own failure: the importer sees it; status() keeps the reason
            _status = f"not registered with timm: importing timm failed ({type(e).__name__}: {e})"
            raise
        _register_or_warn()


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """An import hook that finds nothing itself: it hands back timm's own spec (from the
    finders after it) with a loader that registers the AsCAN models right after timm's
    import, and then removes this hook. It stays until timm is really imported:
    ``importlib.util.find_spec("timm")`` (how libraries probe for timm) also comes here."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and not isinstance(spec.loader, _RegisteringLoader):
            spec.loader = _RegisteringLoader(spec.loader, self)
        return spec


def register_when_timm_is_imported() -> None:
    """Register now if timm is already imported, else as soon as it is (never importing it)."""
    if sys.modules.get("timm") is not None:
        _register_or_warn()
    elif not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimmImport())
