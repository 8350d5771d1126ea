"""Fitness: turns a live model into per-example scores and an objective."""
