"""Ask/tell optimizers over flat genomes in [0, 1]^n. They maximize.

Interface: `Optimizer(cfg, dim, seed)`, `popsize`, `ask() -> list[genome]` (one generation), `tell(genomes,
values)`, `state() -> bytes` and `load_state(bytes)` (everything needed for a bit-exact resume, RNG included).
"""

from evomerge.optim.cma import CMAOptimizer, SepCMAOptimizer
from evomerge.optim.random_search import RandomSearch

OPTIMIZERS = {"cma": CMAOptimizer, "sep_cma": SepCMAOptimizer, "random": RandomSearch}
