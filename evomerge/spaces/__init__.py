"""Search spaces decode a flat genome in [0, 1]^n into a Recipe."""

from evomerge.spaces.layer_weights import LayerWeightsSpace

SPACES = {"layer_weights": LayerWeightsSpace}
