"""M2N2 (Abrantes, Lange, Tang, "Competition and Attraction Improve Model Fusion"): `niches` holds the algorithm,
`flat` and `mosaic` how archive members are stored (flat parameter vectors; per-tensor coefficient vectors over the
source models), `digits` the paper's reference experiment. The optimizer for merge searches is `evomerge.optim.m2n2`
over the space `evomerge.spaces.mosaic`."""
