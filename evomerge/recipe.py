"""A merge recipe: everything needed to materialize one merged model, as plain JSON."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class GroupParams(BaseModel):
    """Per-source parameters of one layer group."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: tuple[float, ...]
    densities: tuple[float, ...] | None = None  # None: no sparsification (density 1)


class Recipe(BaseModel):
    """A fully specified merge of `sources` onto a base.

    `granularity` names how tensors map to `groups` (see `evomerge.sources.layer_group`); `seed` fixes every random
    mask (DARE), so a recipe materializes to identical weights on any worker.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    operator: str
    granularity: str | int = "model"
    groups: dict[str, GroupParams]
    lam: float = Field(1.0, description="global scale λ applied to the merged task vector")
    normalize: bool | None = None  # None: the operator's default (see evomerge.merge.OPERATORS)
    rescale: Literal["inverse", "l1", "none"] | None = None  # None: the operator's default (see OPERATORS)
    gamma: float = 0.01  # Breadcrumbs: fraction of largest-magnitude outliers dropped
    epsilon: float = 0.15  # DELLA: half-width of the keep-probability range
    seed: int = 0

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        return cls.model_validate_json(text)

    @classmethod
    def uniform(cls, operator: str, n_sources: int, weight: float, density: float | None = None, **kw) -> Recipe:
        """One group covering the whole model, the same weight (and density) for every source."""
        dens = None if density is None else (density,) * n_sources
        return cls(operator=operator, groups={"all": GroupParams(weights=(weight,) * n_sources, densities=dens)}, **kw)
