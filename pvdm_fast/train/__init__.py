"""Trainers, EMA, checkpoints, distributed setup and logging."""
