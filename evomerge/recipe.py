"""A merge recipe: everything needed to materialize one merged model, as plain JSON."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class GroupParams(BaseModel):
    """Per-source parameters of one layer group."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: tuple[float, ...]
    densities: tuple[float, ...] | None = None  # None: no sparsification (density 1)
    # multiplies the group's merged task vector (with the recipe's λ): lets a normalizing operator, whose weights
    # cancel out, shrink or grow the merge as task arithmetic's weights do
    scale: float = 1.0


class _JsonRecipe(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str):
        return cls.model_validate_json(text)


class Recipe(_JsonRecipe):
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

    @classmethod
    def uniform(cls, operator: str, n_sources: int, weight: float, density: float | None = None, **kw) -> Recipe:
        """One group covering the whole model, the same weight (and density) for every source."""
        dens = None if density is None else (density,) * n_sources
        return cls(operator=operator, groups={"all": GroupParams(weights=(weight,) * n_sources, densities=dens)}, **kw)


class FlowRecipe(_JsonRecipe):
    """A data-flow merge (DFS): the layers to run, in order, as (model, layer) pairs over the flow's models, and
    per step the scale applied to the hidden state fed into that layer. `host` gives the embeddings, final norm,
    head and tokenizer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["flow"] = "flow"
    host: int = 0
    path: tuple[tuple[int, int], ...] = Field(min_length=1)
    scales: tuple[float, ...]

    @classmethod
    def identity(cls, model: int, n_layers: int) -> FlowRecipe:
        """One model's own layers in order at unit scale: exactly that model."""
        return cls(host=model, path=tuple((model, i) for i in range(n_layers)), scales=(1.0,) * n_layers)

    @model_validator(mode="after")
    def _one_scale_per_step(self) -> FlowRecipe:
        if len(self.scales) != len(self.path):
            raise ValueError(f"scales has {len(self.scales)} entries for a path of {len(self.path)} steps")
        return self


def parse_recipe(text: str) -> Recipe | FlowRecipe:
    """A stored recipe of either kind (flow recipes say kind: flow)."""
    data = json.loads(text)
    return (FlowRecipe if isinstance(data, dict) and data.get("kind") == "flow" else Recipe).model_validate(data)
