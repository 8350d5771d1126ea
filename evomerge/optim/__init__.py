"""Ask/tell optimizers over flat genomes in [0, 1]^n. They maximize."""

from evomerge.optim.cma import CMAOptimizer

OPTIMIZERS = {"cma": CMAOptimizer}
