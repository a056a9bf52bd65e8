"""Bridges from other frameworks' models to the pure JAX loss functions the samplers run."""
