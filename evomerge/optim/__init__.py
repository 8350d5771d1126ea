"""Ask/tell optimizers over flat genomes in [0, 1]^dim. They maximize.

The contract is run over every entry by tests/test_optimizers.py and tests/test_contracts.py.

`OPTIMIZERS` is the one registry (name -> class). Every class keeps this contract:

- `Optimizer(cfg, dim, seed, n_objectives=1, steps=None, x0=None)`: `cfg` an `OptimizerConfig` (popsize, sigma0,
  x0); `x0` a length-`dim` start point that replaces cfg.x0 (a space's own, e.g. data flow's 'start at A');
  `steps` a length-`dim` array, `steps[i] == 0` a continuous gene, `steps[i] > 0` a discrete gene on the grid
  k·steps[i], k = 0 … ⌊1/steps[i]⌋ (1.0: binary, 0.25: five levels; see `evomerge.optim.base`).
- class attributes `max_objectives` (1: single-objective, None: any number) and `supports_steps`; asking for more
  objectives or for discrete genes than a class handles raises ValueError naming the registered ones that would.
- `popsize` (cfg.popsize, else 4 + ⌊3 ln dim⌋ for all), `ask() -> list[np.ndarray]` (one whole generation, inside
  [0, 1], discrete genes exactly on their grid), `tell(genomes, values, examples=None)` with the genomes `ask` gave
  out, in order, and `values` a list of floats (one objective) or of `n_objectives`-tuples (several); `examples`
  (per candidate, its per-example scores or None) is given only to classes that declare `wants_examples`. Failed
  candidates are told a worst-case finite number by the caller; no value is special.
- what a class can do is declared on it (the search reads these, never probes): `max_objectives`, `supports_steps`,
  `steady_state`, `needs_space` (constructed with `space=` the search space), `wants_examples`, `keeps_archive`
  (`archive()` lists the members, `parents(genome)` a bred child's parents, for the report).
- class attribute `steady_state`: True where the optimizer also works one candidate at a time, for executors that keep
  every worker busy. Then `ask_one() -> np.ndarray` gives out one genome (the same bounds and grid as `ask`),
  outstanding until `tell_one(genome, value, examples=None)` (a float, or an `n_objectives`-tuple) takes it back; any
  number may be outstanding and they are told in any order. `tell_one` finds its genome among the outstanding ones by
  value (exactly equal; of bit-identical outstanding ones, the first asked is taken: they are the same candidate), and
  raises ValueError for a genome that is not outstanding. `outstanding() -> list[np.ndarray]` lists them in the order
  asked (for a runner to issue again after a crash; always empty where `steady_state` is False). Either mode works
  alone, but they do not interleave: `ask` with genomes of `ask_one` outstanding, or `ask_one` with a generation asked
  and not told, raises RuntimeError. Where `steady_state` is False, `ask_one`/`tell_one` raise NotImplementedError
  naming the registered optimizers that would do.
- `state() -> bytes` (data, never a pickle: `evomerge.optim.state`) and `load_state(bytes)`: everything needed for a
  bit-exact resume, RNG included, also between `ask` and `tell`: an optimizer of any seed that loads a state taken
  right after `ask` accepts `tell(those genomes, values)` and then asks exactly what the original would have. Likewise
  in steady-state, at any moment: the state holds the outstanding genomes (and what the optimizer keeps for them), so
  the loaded one accepts `tell_one` of each of them, in any order, and then `ask_one`s exactly what the original would
  have.

Optimizers: `cma`, `sep_cma` (CMA-ES, continuous, one objective), `cma_wm` (CMA-ES with margin, for discrete genes,
one objective), all three in whole generations only; `tpe`, `gp`, `nsga2` (Optuna samplers, discrete genes, any
number of objectives, steady-state too), `random` (the baseline, anything, steady-state too), `m2n2` (M2N2 over
the mosaic space only, one objective, steady-state too; it learns from per-example scores and keeps an archive).
`pareto_front`
(`evomerge.optim.pareto`) picks the non-dominated points of a multi-objective run.
"""

from evomerge.optim.base import Optimizer
from evomerge.optim.cma import CMAOptimizer, CMAwMOptimizer, SepCMAOptimizer
from evomerge.optim.m2n2 import M2N2Optimizer
from evomerge.optim.optuna_opt import GPOptimizer, NSGA2Optimizer, TPEOptimizer
from evomerge.optim.random_search import RandomSearch

OPTIMIZERS: dict[str, type[Optimizer]] = {
    "cma": CMAOptimizer,
    "sep_cma": SepCMAOptimizer,
    "cma_wm": CMAwMOptimizer,
    "tpe": TPEOptimizer,
    "gp": GPOptimizer,
    "nsga2": NSGA2Optimizer,
    "random": RandomSearch,
    "m2n2": M2N2Optimizer,
}
