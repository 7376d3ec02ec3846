"""Reusable training pieces: the loop, batches, checkpoints, schedule, seeding, metrics, evaluation."""
