"""mmedge runtime: torch-free inference over a bundle of per-pattern graphs.

Imports numpy, onnxruntime and tokenizers only (TensorRT lazily). Never
imports torch, transformers, train, export or calibration.
"""
from runtime.patterns import Pattern, all_patterns

__all__ = ["Pattern", "all_patterns"]
