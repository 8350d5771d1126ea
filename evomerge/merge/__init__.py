"""Merge operators (one registry) and the materializer that applies a recipe to a live model."""

from evomerge.merge.generalized import GeneralizedMerge

# name -> operator. Settings mirror mergekit 0.1.5's defaults for normalization so recipes mean the same thing.
OPERATORS: dict[str, GeneralizedMerge] = {
    "task_arithmetic": GeneralizedMerge(sparsify=None, consensus=False, default_normalize=False, uses_density=False),
    "ties": GeneralizedMerge(sparsify="magnitude", consensus=True, default_normalize=True, uses_density=True),
    "dare_linear": GeneralizedMerge(sparsify="random", consensus=False, default_normalize=False, uses_density=True),
    "dare_ties": GeneralizedMerge(sparsify="random", consensus=True, default_normalize=False, uses_density=True),
}
