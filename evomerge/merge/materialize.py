"""Applies a recipe to a live model, in place, one tensor at a time."""

from __future__ import annotations

import hashlib

import torch

from evomerge.errors import MergeError
from evomerge.merge import OPERATORS
from evomerge.merge.generalized import MergeParams, TensorInputs
from evomerge.recipe import Recipe
from evomerge.sources import SourcePool, layer_group


def tensor_seed(recipe_seed: int, name: str) -> int:
    """A stable per-(recipe, tensor) seed, identical on every worker and Python process."""
    digest = hashlib.sha256(f"{recipe_seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class Merger:
    """Materializes recipes over one SourcePool. Allocates only per-tensor temporaries, never a model copy."""

    def __init__(self, pool: SourcePool):
        self.pool = pool

    def merged_tensor(self, recipe: Recipe, name: str) -> torch.Tensor:
        try:
            op = OPERATORS[recipe.operator]
        except KeyError:
            raise MergeError(f"unknown operator {recipe.operator!r}; expected one of {sorted(OPERATORS)}") from None
        group = layer_group(name, recipe.granularity, self.pool.n_blocks)
        try:
            params = recipe.groups[group]
        except KeyError:
            raise MergeError(f"recipe has no parameters for group {group!r} (tensor {name})") from None
        pool = self.pool
        inputs = TensorInputs(
            base=pool.base[name],
            deltas=[d[name] for d in pool.deltas],
            ranks=lambda i, kind: pool.magnitude_ranks(i, name, kind),
            generator=self._generator(recipe.seed, name) if op.sparsify in ("random", "della") else None,
        )
        return op.merge(inputs, MergeParams(
            weights=params.weights, densities=params.densities, lam=recipe.lam, normalize=recipe.normalize,
            rescale=recipe.rescale, gamma=recipe.gamma, epsilon=recipe.epsilon))

    def _generator(self, seed: int, name: str) -> torch.Generator:
        device = self.pool.base[name].device
        return torch.Generator(device=device).manual_seed(tensor_seed(seed, name))

    @torch.no_grad()
    def materialize(self, recipe: Recipe, model: torch.nn.Module) -> None:
        """Write the merge into `model`'s parameters in place. Raises MergeError on NaN/Inf."""
        live = model.state_dict(keep_vars=True)
        for name in self.pool.base:
            merged = self.merged_tensor(recipe, name)
            if not torch.isfinite(merged).all():
                raise MergeError(f"merge produced NaN/Inf in tensor {name}")
            live[name].data.copy_(merged)
