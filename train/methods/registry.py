"""The method registry: ``@register(name)``, discovery of every module in ``train.methods``, lookup.

A new method is one file in ``train.methods`` that decorates its ``MultimodalModel`` subclass
with ``@register("name")``; the first lookup imports every module of the package.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from runtime.errors import ConfigError

from train.methods.base import DatasetInfo, MultimodalModel

_REGISTRY: dict[str, type[MultimodalModel]] = {}
M = TypeVar("M", bound=type[MultimodalModel])


def register(name: str) -> Callable[[M], M]:
    def deco(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.method_name = name
        _REGISTRY[name] = cls
        return cls

    return deco


_DISCOVERED = False


def discover_methods() -> None:
    """Import every module of ``train.methods`` once, so that each registers its method."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    import importlib
    import pkgutil

    import train.methods as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("base", "registry") and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    _DISCOVERED = True


def get_method(name: str) -> type[MultimodalModel]:
    discover_methods()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; available: {available_methods()}")
    return _REGISTRY[name]


def available_methods() -> list[str]:
    discover_methods()
    return sorted(_REGISTRY)


def method_options(name: str) -> list[tuple[str, Any]]:
    """(option, default) of a method's config dataclass, in declaration order."""
    cls = get_method(name)
    if not dataclasses.is_dataclass(cls.config_class):
        return []
    out = []
    for f in dataclasses.fields(cls.config_class):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        out.append((f.name, default))
    return out


def method_summary(name: str) -> str:
    """The first line of the method's module docstring."""
    import sys

    doc = (sys.modules[get_method(name).__module__].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def build_method(name: str, info: DatasetInfo, encoders: Mapping[str, nn.Module],
                 config: Mapping[str, Any] | None = None) -> MultimodalModel:
    return get_method(name).build(info, encoders, config)
