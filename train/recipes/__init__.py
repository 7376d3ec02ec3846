"""Experiments people run: unimodal pretraining, method training, protocols, ablation, demo."""
