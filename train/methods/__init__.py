"""Missing-modality methods, one paper per file, registered by name.

``get_method(name).build(info, encoders, config)`` makes a model; every model exposes
``pattern_module(pattern)``, the one branch that evaluation runs and export traces.
"""
from train.methods import cmpt, late_fusion, modality_dropout  # noqa: F401  (registration)
from train.methods.base import (
    DatasetInfo,
    MultimodalModel,
    PatternModule,
    available_methods,
    build_method,
    get_method,
    pattern_inputs,
    register,
)

__all__ = [
    "DatasetInfo",
    "MultimodalModel",
    "PatternModule",
    "available_methods",
    "build_method",
    "get_method",
    "pattern_inputs",
    "register",
]
