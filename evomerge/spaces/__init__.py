"""Search spaces decode a flat genome in [0, 1]^n into a Recipe."""

from evomerge.spaces.data_flow import DataFlowSpace
from evomerge.spaces.layer_weights import LayerWeightsSpace
from evomerge.spaces.mosaic import MosaicSpace

# name -> class(space_config, n_models, layers): layers is the number of transformer blocks of the base for
# layer_weights and mosaic, and the tuple of every flow model's layer count for data_flow
SPACES = {"layer_weights": LayerWeightsSpace, "data_flow": DataFlowSpace, "mosaic": MosaicSpace}
