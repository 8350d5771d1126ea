"""Archive members as flat parameter vectors (torch tensors): the digits reproduction, and the explicit reference
the mosaic backend is tested against."""

from __future__ import annotations

import numpy as np
import torch


class FlatBackend:
    """Members are 1-D tensors of `size` parameters. `boundaries` (sorted offsets from 0 to size, e.g. where each
    tensor of a model starts) restricts split points to them; None lets a split fall between any two parameters."""

    def __init__(self, size: int, boundaries: np.ndarray | None = None):
        self.size = int(size)
        self.boundaries = None if boundaries is None else np.asarray(boundaries, dtype=np.int64)
        self._gen = torch.Generator()  # re-seeded for every mutation: the archive's stream holds the state

    @staticmethod
    def dot(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.dot(a, b))

    @staticmethod
    def mix(a: torch.Tensor, b: torch.Tensor, split: int, first: tuple[float, float],
            rest: tuple[float, float]) -> torch.Tensor:
        out = torch.empty_like(a)
        torch.add(a[:split] * first[0], b[:split], alpha=first[1], out=out[:split])
        torch.add(a[split:] * rest[0], b[split:], alpha=rest[1], out=out[split:])
        return out

    def mutate(self, x: torch.Tensor, std: float, seed: int) -> torch.Tensor:
        # torch's generator draws the 19k normals of the digits MLP ~3x faster than numpy's (measured)
        noise = torch.randn(x.shape, generator=self._gen.manual_seed(seed), dtype=x.dtype)
        return noise.mul_(std).add_(x)

    @staticmethod
    def add_noise(x: torch.Tensor, noise: np.ndarray, std: float) -> torch.Tensor:
        """x + std·noise for given standard normals (float32, as the reference code adds its own)."""
        return torch.from_numpy(np.asarray(noise, dtype=np.float32)).mul_(std).add_(x)

    @staticmethod
    def copy(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def to_numpy(x: torch.Tensor) -> np.ndarray:
        return x.numpy().copy()

    @staticmethod
    def from_numpy(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(x))
