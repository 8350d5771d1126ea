"""Search spaces decode a flat genome into a recipe.

`SPACES` is the one registry (name -> `SearchSpace` class; `space.type` names one). The contract is in
`evomerge.spaces.base`; tests/test_contracts.py runs it over every entry.
"""

from evomerge.spaces.base import SearchSpace
from evomerge.spaces.data_flow import DataFlowSpace
from evomerge.spaces.layer_weights import LayerWeightsSpace
from evomerge.spaces.mosaic import MosaicSpace

# name -> class(space_config, n_sources, layers, sources=None): layers is the number of transformer blocks of the
# base for layer_weights and mosaic, and the tuple of every flow model's layer count for data_flow
SPACES: dict[str, type[SearchSpace]] = {"layer_weights": LayerWeightsSpace, "data_flow": DataFlowSpace,
                                        "mosaic": MosaicSpace}

__all__ = ["SPACES", "SearchSpace"]
