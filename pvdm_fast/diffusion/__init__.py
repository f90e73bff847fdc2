"""Schedules, training losses, samplers, guidance and long-video generation (free functions on latents)."""
