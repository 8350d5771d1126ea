"""Archive members as mosaics: per tensor ("unit"), a coefficient vector over the K source models.

Every descendant of the sources under M2N2's crossover is, tensor by tensor, a linear combination of the sources
(SLERP and the split point only ever combine two parents' units with two scalars), so a member is a [U, K] matrix C
and stands for the model whose tensor u is Σₖ C[u, k]·θₖ[u] — never a copy of the weights. SLERP's one global angle
needs ⟨A, B⟩ = Σᵤ C_A[u]ᵀ Gᵤ C_B[u] only, with Gᵤ[k, l] = ⟨θₖ[u], θₗ[u]⟩ the per-tensor Gram matrices of the
sources, computed once, streaming one tensor at a time. Splits fall between tensors (DESIGN §6: tensor
granularity), at the tensor boundary nearest to a split point drawn over all parameters, as the paper draws it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from evomerge.sources import MappedCheckpoint


def source_units(path: Path) -> list[tuple[str, int]]:
    """(name, number of parameters) of every floating-point tensor of a checkpoint, in its file order — the tensors
    a merge writes (`SourcePool.base` holds the same ones)."""
    meta = MappedCheckpoint(path).meta
    return [(n, int(np.prod(m.shape, dtype=np.int64))) for n, m in meta.items() if m.is_floating_point()]


def source_gram(paths: list[Path], names: list[str]) -> np.ndarray:
    """Gᵤ[k, l] = ⟨θₖ[u], θₗ[u]⟩ for every tensor u (float64, [U, K, K]), reading one tensor of each source at a
    time from memory-mapped files."""
    cks = [MappedCheckpoint(p) for p in paths]
    out = np.empty((len(names), len(paths), len(paths)))
    for u, name in enumerate(names):
        stack = torch.stack([ck[name].to(torch.float64).reshape(-1) for ck in cks])
        out[u] = (stack @ stack.T).numpy()
    return out


class MosaicBackend:
    """The M2N2 backend over mosaics: members are float64 [U, K] coefficient matrices."""

    def __init__(self, sizes: list[int] | np.ndarray, gram: Callable[[], np.ndarray]):
        sizes = np.asarray(sizes, dtype=np.int64)
        self.boundaries = np.concatenate([[0], np.cumsum(sizes)])
        self.size = int(self.boundaries[-1])
        self._gram_fn = gram

    @cached_property
    def gram(self) -> np.ndarray:
        """Computed at the first crossover, not before: a run that never breeds never reads the sources."""
        return np.asarray(self._gram_fn(), dtype=np.float64)

    def dot(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.einsum("uk,ukl,ul->", a, self.gram, b))

    def mix(self, a: np.ndarray, b: np.ndarray, split: int, first: tuple[float, float],
            rest: tuple[float, float]) -> np.ndarray:
        u = int(np.searchsorted(self.boundaries, split))  # split is a boundary: units before it take `first`
        out = np.empty_like(a)
        out[:u] = first[0] * a[:u] + first[1] * b[:u]
        out[u:] = rest[0] * a[u:] + rest[1] * b[u:]
        return out

    @staticmethod
    def mutate(x: np.ndarray, std: float, seed: int) -> np.ndarray:
        raise ValueError("mosaic members are combinations of their sources and are not mutated (M2N2 mutates only "
                         "when evolving from scratch)")

    @staticmethod
    def copy(x: np.ndarray) -> np.ndarray:
        return x.copy()

    @staticmethod
    def to_numpy(x: np.ndarray) -> np.ndarray:
        return x.copy()

    @staticmethod
    def from_numpy(x: np.ndarray) -> np.ndarray:
        return np.array(x, dtype=np.float64)
