"""Search spaces decode a flat genome in [0, 1]^n into a Recipe."""

from evomerge.spaces.layer_weights import LayerWeightsSpace
from evomerge.spaces.mosaic import MosaicSpace

SPACES = {"layer_weights": LayerWeightsSpace, "mosaic": MosaicSpace}
