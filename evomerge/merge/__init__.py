"""Merge operators (one registry) and the materializer that applies a recipe to a live model."""

from evomerge.merge.generalized import GeneralizedMerge, Linear, Slerp

# name -> operator. Normalization and rescaling defaults mirror mergekit 0.1.5, so a recipe means what the same
# mergekit config means — except DARE/DELLA rescaling, which defaults to the papers' 1/p ('l1' gives mergekit's).
OPERATORS: dict[str, GeneralizedMerge | Linear | Slerp] = {
    "linear": Linear(),
    "slerp": Slerp(),
    "task_arithmetic": GeneralizedMerge(sparsify=None, consensus=False, default_normalize=False),
    "ties": GeneralizedMerge(sparsify="magnitude", consensus=True, default_normalize=True),
    "dare_linear": GeneralizedMerge(sparsify="random", consensus=False, default_normalize=False,
                                    default_rescale="inverse"),
    "dare_ties": GeneralizedMerge(sparsify="random", consensus=True, default_normalize=False,
                                  default_rescale="inverse"),
    "breadcrumbs": GeneralizedMerge(sparsify="outliers", consensus=False, default_normalize=False),
    "breadcrumbs_ties": GeneralizedMerge(sparsify="outliers", consensus=True, default_normalize=False),
    "della": GeneralizedMerge(sparsify="della", consensus=True, default_normalize=True, default_rescale="inverse"),
    "della_linear": GeneralizedMerge(sparsify="della", consensus=False, default_normalize=False,
                                     default_rescale="inverse"),
}
