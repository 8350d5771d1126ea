"""Archive members as mosaics: per unit (a tensor, or a block of a tensor's rows), a coefficient vector over the
K source models.

Every descendant of the sources under M2N2's crossover is, tensor by tensor, a linear combination of the sources
(SLERP and the split point only ever combine two parents' units with two scalars), so a member is a [U, K] matrix C
and stands for the model whose tensor u is Σₖ C[u, k]·θₖ[u] — never a copy of the weights. SLERP's one global angle
needs ⟨A, B⟩ = Σᵤ C_A[u]ᵀ Gᵤ C_B[u] only, with Gᵤ[k, l] = ⟨θₖ[u], θₗ[u]⟩ the per-unit Gram matrices of the
sources, computed once, streaming one tensor at a time. Splits fall between units (DESIGN §6: tensor or row
granularity), at the unit boundary nearest to a split point drawn over all parameters, as the paper draws it.
Units follow the parameters' order: tensors in file order, a tensor's rows top to bottom.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from evomerge.sources import MappedCheckpoint


@dataclass(frozen=True)
class Unit:
    """Rows [start, end) of tensor `name` (all of it when rows is None): `size` parameters."""

    name: str
    start: int
    end: int
    size: int
    whole: bool

    @property
    def group(self) -> str:
        """Its group name in a recipe: the tensor's name, or '<name>@<start>:<end>' (granularity 'rows')."""
        return self.name if self.whole else f"{self.name}@{self.start}:{self.end}"


def source_units(path: Path, rows: int | None = None) -> list[Unit]:
    """The units of every floating-point tensor of a checkpoint, in its file order — the tensors a merge writes
    (`SourcePool.base` holds the same ones); with `rows`, each tensor cut into blocks of that many rows."""
    out = []
    for name, m in MappedCheckpoint(path).meta.items():
        if not m.is_floating_point():
            continue
        shape = tuple(m.shape) or (1,)
        per_row = int(np.prod(shape[1:], dtype=np.int64))
        step = shape[0] if rows is None else rows
        for a in range(0, shape[0], step):
            b = min(a + step, shape[0])
            out.append(Unit(name, a, b, (b - a) * per_row, whole=rows is None))
    return out


def source_gram(paths: list[Path], units: list[Unit]) -> np.ndarray:
    """Gᵤ[k, l] = ⟨θₖ[u], θₗ[u]⟩ for every unit u (float64, [U, K, K]), reading one tensor of each source at a
    time from memory-mapped files."""
    cks = [MappedCheckpoint(p) for p in paths]
    out = np.empty((len(units), len(paths), len(paths)))
    stack, loaded = None, None
    for i, u in enumerate(units):
        if u.name != loaded:  # a tensor's units are consecutive: each tensor is read once
            stack = torch.stack([ck[u.name].to(torch.float64).reshape(-1) for ck in cks])
            loaded = u.name
        per_row = u.size // (u.end - u.start)
        part = stack[:, u.start * per_row : u.end * per_row]
        out[i] = (part @ part.T).numpy()
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

    add_noise = mutate

    @staticmethod
    def copy(x: np.ndarray) -> np.ndarray:
        return x.copy()

    @staticmethod
    def to_numpy(x: np.ndarray) -> np.ndarray:
        return x.copy()

    @staticmethod
    def from_numpy(x: np.ndarray) -> np.ndarray:
        return np.array(x, dtype=np.float64)
