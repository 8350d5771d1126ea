"""M2N2's mosaic space: a genome is a [U, K] matrix of per-unit coefficients over the K sources, flattened; a unit
is a tensor, or with `space.rows: R` a block of R rows of one. It decodes to an ordinary recipe, operator linear
without normalization and one group per unit (granularity 'tensor', or 'rows'): unit u = Σₖ C[u, k]·θₖ[u], which
the merge engine materializes as it does any recipe. The genome holds the coefficients themselves (≥ 0; a SLERP
child's coefficients may sum to a little more than 1), not numbers mapped from [0, 1]: only the m2n2 optimizer
proposes them.

Why a mosaic is enough: every descendant of the sources under M2N2's crossover is, tensor by tensor, a linear
combination of the sources (SLERP and the split point only ever combine two parents' units with two scalars), so an
archive member is a [U, K] matrix C and stands for the model whose tensor u is Σₖ C[u, k]·θₖ[u] — never a copy of
the weights. SLERP's one global angle needs ⟨A, B⟩ = Σᵤ C_A[u]ᵀ Gᵤ C_B[u] only, with Gᵤ[k, l] = ⟨θₖ[u], θₗ[u]⟩
the per-unit Gram matrices of the sources, computed once, streaming one tensor at a time (`MosaicBackend`, the
M2N2 backend of `evomerge.m2n2.niches` over mosaics). Splits fall between units (tensor or row granularity: a
split inside a unit would make the child no longer a per-unit combination), at the unit boundary nearest to a split
point drawn over all parameters, as the paper draws it. Units follow the parameters' order: tensors in file order, a
tensor's rows top to bottom.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path

import numpy as np
import torch

from evomerge.recipe import GroupParams, Recipe
from evomerge.sources import MappedCheckpoint
from evomerge.spaces.base import SearchSpace


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


def source_gram(paths: list[Path], units: list[Unit], base: Path | None = None) -> np.ndarray:
    """Gᵤ[k, l] = ⟨θₖ[u], θₗ[u]⟩ for every unit u (float64, [U, K, K]), reading one tensor of each source at a
    time from memory-mapped files; with `base`, of the task vectors τₖ = θₖ − θ_base."""
    cks = [MappedCheckpoint(p) for p in paths]
    base_ck = None if base is None else MappedCheckpoint(base)
    out = np.empty((len(units), len(paths), len(paths)))
    stack, loaded = None, None
    for i, u in enumerate(units):
        if stack is None or u.name != loaded:  # a tensor's units are consecutive: each tensor is read once
            stack = torch.stack([ck[u.name].to(torch.float64).reshape(-1) for ck in cks])
            if base_ck is not None:
                stack -= base_ck[u.name].to(torch.float64).reshape(-1)
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


class MosaicSpace(SearchSpace):
    needs_sources = True  # the runner passes the source model directories (tensor names; Gram matrices)
    bounded = False  # coefficients ≥ 0, not mapped from [0, 1]

    def __init__(self, cfg, n_sources: int, n_blocks: int, sources: list[Path] | None = None,
                 base: Path | None = None):
        if not sources:
            raise ValueError("the mosaic space needs the source model directories")
        if len(sources) != n_sources:
            raise ValueError(f"{len(sources)} source directories for {n_sources} sources")
        super().__init__(cfg, n_sources, n_blocks)
        self.k, self.sources = n_sources, [Path(s) for s in sources]
        # over task vectors: a member is θ_base + Σₖ C[u, k]·τₖ[u] (its coefficients need not sum to 1, so SLERP
        # of two experts' task vectors reaches past their average, as task arithmetic does)
        self.base = Path(base) if getattr(cfg, "task_vectors", False) and base is not None else None
        self.rows = getattr(cfg, "rows", None)
        self.units = source_units(self.sources[0], self.rows)
        self.names = [u.group for u in self.units]  # the recipe's group names
        self.sizes = [u.size for u in self.units]

    @property
    def dim(self) -> int:
        return len(self.names) * self.k

    def backend(self) -> MosaicBackend:
        return MosaicBackend(self.sizes, partial(source_gram, self.sources, self.units, self.base))

    def one_hot(self, k: int) -> np.ndarray:
        """Source k itself, as a mosaic."""
        c = np.zeros((len(self.names), self.k))
        c[:, k] = 1.0
        return c

    def decode(self, x: np.ndarray, seed: int = 0) -> Recipe:
        c = self._genome(x).reshape(len(self.names), self.k)
        groups = {n: GroupParams(weights=tuple(float(v) for v in row)) for n, row in zip(self.names, c, strict=True)}
        return Recipe(operator="linear" if self.base is None else "task_arithmetic",
                      granularity="tensor" if self.rows is None else "rows", groups=groups, normalize=False, seed=seed)
