"""Missing-modality methods, one paper per file, registered by name.

Every module in this package is imported on first use of the registry, so a new method
is one file here (plus its test) and nothing else: it calls ``@register("name")`` on its
``MultimodalModel`` subclass. ``get_method(name).build(info, encoders, config)`` makes a
model; every model exposes ``pattern_module(pattern)``, the one branch that evaluation
runs and export traces.
"""
from train.methods.base import DatasetInfo, MultimodalModel, PatternModule, StepContext, pattern_inputs
from train.methods.registry import available_methods, build_method, get_method, method_options, register

__all__ = [
    "DatasetInfo",
    "MultimodalModel",
    "PatternModule",
    "StepContext",
    "available_methods",
    "build_method",
    "get_method",
    "method_options",
    "pattern_inputs",
    "register",
]
