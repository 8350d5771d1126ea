"""Applies a recipe to a live model, in place, one tensor at a time."""

from __future__ import annotations

import hashlib

import torch

from evomerge.errors import MergeError
from evomerge.merge import OPERATORS
from evomerge.merge.generalized import MergeParams, TensorInputs
from evomerge.merge.sparsify import magnitude_ranks
from evomerge.merge.topk import MagnitudeIndex
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
        self._rows: tuple[Recipe | None, dict] = (None, {})  # the last 'rows' recipe and its parsed groups
        self._ranks: dict[tuple[str, str], torch.Tensor] = {}
        self._order: dict[tuple[str, str], list[MagnitudeIndex]] = {}

    def magnitude_index(self, name: str, kind: str) -> list[MagnitudeIndex]:
        """Each source's magnitude rank buckets of τ[name] ('desc': TIES, 'asc': Breadcrumbs), computed once (the
        sources never change during a search), also when the pool streams: 1 byte per parameter and source."""
        key = (name, kind)
        if key not in self._order:
            self._order[key] = [MagnitudeIndex.build(d, kind == "desc") for d in self.pool.stacked[name]]
        return self._order[key]

    def magnitude_ranks(self, name: str, kind: str = "row_asc") -> torch.Tensor:
        """DELLA's per-row magnitude ranks of every source's τ[name] ('row_asc'), stacked [K, *shape] (int32),
        computed once — or, when the pool streams, every time, so that memory stays bounded."""
        if kind != "row_asc":
            raise ValueError(f"per-entry ranks are kept for DELLA ('row_asc') only, not {kind!r}: "
                             "TIES and Breadcrumbs use magnitude_index")
        key = (name, kind)
        if key in self._ranks:
            return self._ranks[key]
        ranks = torch.stack([magnitude_ranks(d) for d in self.pool.stacked[name]])
        if not self.pool.streaming:
            self._ranks[key] = ranks
        return ranks

    def merged_tensor(self, recipe: Recipe, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """The merged value of one tensor, written into `out` when given (the live parameter, in place)."""
        try:
            op = OPERATORS[recipe.operator]
        except KeyError:
            raise MergeError(f"unknown operator {recipe.operator!r}; expected one of {sorted(OPERATORS)}") from None
        if recipe.granularity == "rows":
            return self._merged_rows(op, recipe, name, out)
        group = layer_group(name, recipe.granularity, self.pool.n_blocks)
        try:
            group_params = recipe.groups[group]
        except KeyError:
            raise MergeError(f"recipe has no parameters for group {group!r} (tensor {name})") from None
        pool = self.pool
        inputs = TensorInputs(
            base=pool.base[name],
            task_vectors=lambda: pool.stacked[name],
            order=lambda kind: self.magnitude_index(name, kind),
            ranks=lambda kind: self.magnitude_ranks(name, kind),
            seed=tensor_seed(recipe.seed, name),
            generator=self._generator(recipe.seed, name) if op.sparsify == "della" else None,
            sources=lambda i: pool.source(name, i),
            streaming=pool.streaming,
        )
        params = MergeParams(weights=group_params.weights, densities=group_params.densities,
                             lam=recipe.lam * group_params.scale,
                             normalize=recipe.normalize, rescale=recipe.rescale, gamma=recipe.gamma,
                             epsilon=recipe.epsilon)
        return op.merge(inputs, params, out=out)

    def _merged_rows(self, op, recipe: Recipe, name: str, out: torch.Tensor | None) -> torch.Tensor:
        """Granularity 'rows' (M2N2's row-level mosaics): groups named '<tensor>@<first row>:<end row>', each merged
        on its rows; together they must cover the tensor's rows. Linear and task arithmetic only."""
        if recipe.operator not in ("linear", "task_arithmetic"):
            raise MergeError(f"granularity 'rows' supports linear and task_arithmetic, not {recipe.operator!r}")
        base, deltas = self.pool.base[name], self.pool.stacked[name]
        target = out if out is not None and out.is_contiguous() else torch.empty_like(base)
        covered = 0
        if self._rows[0] is not recipe:  # parsed once per recipe, not once per tensor
            self._rows = (recipe, row_groups(recipe))
        for a, b, gp in self._rows[1].get(name, []):
            if a != covered:
                break
            params = MergeParams(weights=gp.weights, lam=recipe.lam * gp.scale, normalize=recipe.normalize)
            op.merge(TensorInputs(base=base[a:b], task_vectors=deltas[:, a:b]), params, out=target[a:b])
            covered = b
        if covered != base.shape[0]:
            raise MergeError(f"recipe's row groups of tensor {name} do not cover its rows 0:{base.shape[0]} "
                             f"in order (stopped at row {covered})")
        if out is not None and target is not out:
            out.copy_(target)
        return target if out is None else out

    def _generator(self, seed: int, name: str) -> torch.Generator:
        # the pool's device, not pool.base[name].device: a streaming pool would read the tensor from disk for it
        return torch.Generator(device=self.pool.device).manual_seed(tensor_seed(seed, name))

    @torch.no_grad()
    def materialize(self, recipe: Recipe, model: torch.nn.Module, check_finite: bool = True) -> None:
        """Write the merge into `model`'s parameters in place. Raises MergeError naming the first tensor with
        NaN/Inf; a search passes check_finite=False and checks the logits instead, which costs no extra pass."""
        live = model.state_dict(keep_vars=True)
        for name in self.pool.base:
            target = live[name].data
            if target.dtype == self.pool.base[name].dtype:
                self.merged_tensor(recipe, name, out=target)
            else:
                target.copy_(self.merged_tensor(recipe, name))
        if check_finite:
            self.check_finite(model)

    def check_finite(self, model: torch.nn.Module) -> None:
        live = model.state_dict()
        for name in self.pool.base:
            if not torch.isfinite(live[name]).all():
                raise MergeError(f"merge produced NaN/Inf in tensor {name}")


def row_groups(recipe: Recipe) -> dict[str, list[tuple[int, int, object]]]:
    """tensor name -> [(first row, end row, GroupParams)], sorted, from a 'rows' recipe's group names."""
    index: dict[str, list] = {}
    for key, gp in recipe.groups.items():
        name, _, span = key.rpartition("@")
        a, _, b = span.partition(":")
        try:
            index.setdefault(name, []).append((int(a), int(b), gp))
        except ValueError:
            raise MergeError(f"group {key!r}: granularity 'rows' expects groups named "
                             "'<tensor>@<first>:<end>'") from None
    for spans in index.values():
        spans.sort(key=lambda s: s[0])
    return index
