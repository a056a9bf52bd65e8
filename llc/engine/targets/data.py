"""Input distributions and noise models for teacher-student data (NumPy, deterministic per seed)."""

from __future__ import annotations

import numpy as np

from llc.config import DataConfig


def sample_inputs(rng: np.random.Generator, cfg: DataConfig, n: int, dim: int) -> np.ndarray:
    if cfg.x_dist == "gauss_iso":
        return rng.standard_normal((n, dim))
    if cfg.x_dist == "gauss_aniso":
        # Standard deviations spaced log-uniformly from 1 down to 1/cond_number.
        scales = np.geomspace(1.0, 1.0 / cfg.cond_number, dim)
        return rng.standard_normal((n, dim)) * scales
    if cfg.x_dist == "mixture":
        centers = rng.standard_normal((cfg.mixture_components, dim)) * cfg.mixture_spread
        labels = rng.integers(0, cfg.mixture_components, size=n)
        return centers[labels] + rng.standard_normal((n, dim))
    if cfg.x_dist == "lowdim":
        k = min(cfg.lowdim_dim, dim)
        basis, _ = np.linalg.qr(rng.standard_normal((dim, k)))
        latent = rng.standard_normal((n, k))
        # A gently curved manifold: a linear embedding plus a small quadratic bend.
        bend = 0.1 * np.sum(latent**2, axis=1, keepdims=True) * rng.standard_normal((1, dim)) / np.sqrt(dim)
        return latent @ basis.T * np.sqrt(dim / k) + bend
    if cfg.x_dist == "heavy_tail":
        return rng.standard_t(cfg.x_df, size=(n, dim))
    raise ValueError(f"data.x_dist: unknown {cfg.x_dist!r}")


def add_noise(rng: np.random.Generator, cfg: DataConfig, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    s = cfg.noise_scale
    if cfg.noise == "gauss":
        return y + s * rng.standard_normal(y.shape)
    if cfg.noise == "hetero":
        # Noise grows with the input norm (relative to its typical size sqrt(dim)).
        scale = s * (1.0 + np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(x.shape[1]))
        return y + scale * rng.standard_normal(y.shape)
    if cfg.noise == "student_t":
        return y + s * rng.standard_t(cfg.noise_df, size=y.shape)
    if cfg.noise == "outliers":
        noisy = y + s * rng.standard_normal(y.shape)
        hit = rng.random(y.shape[0]) < cfg.outlier_frac
        noisy[hit] += cfg.outlier_scale * rng.standard_normal((int(hit.sum()), y.shape[1]))
        return noisy
    raise ValueError(f"data.noise: unknown {cfg.noise!r}")
