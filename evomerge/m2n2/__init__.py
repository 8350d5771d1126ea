"""M2N2 (Abrantes, Lange, Tang, "Competition and Attraction Improve Model Fusion"): `niches` holds the algorithm,
`flat` flat parameter vectors as archive members, `digits` the paper's reference experiment. The optimizer for
merge searches is `evomerge.optim.m2n2` over the space `evomerge.spaces.mosaic` (which also holds its members:
per-tensor coefficient vectors over the source models)."""
