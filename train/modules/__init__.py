"""Reusable layers for the methods (LoRA)."""
