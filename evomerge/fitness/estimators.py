"""Cheaper fitness from per-example correctness: racing bounds and IRT-estimated accuracy.

Racing scores a candidate's examples in a fixed random order and stops once a confidence bound on its paired
difference to a reference (the incumbent) shows that it cannot beat it. Two bounds, both for sampling without
replacement from the finite split (so they close to zero once every example has been seen), both spent over the
looks taken (δ / looks each):
- "bayes" (default): the posterior predictive of the unseen examples' total given the seen differences (a
  Dirichlet-multinomial with one pseudo-observation at each end of the range, normal approximation). Tight: about
  three times narrower than the rigorous bound at a few hundred examples.
- "bernstein": the empirical Bernstein-Serfling bound of Bardenet & Maillard (2015), distribution-free and
  rigorous, but its range term makes it wide below a few thousand examples.

IRT (item response theory) fits, on the per-example correctness of every model scored so far, a multidimensional
two-parameter logistic model: P(model m answers example j) = sigmoid(theta_m . a_j + b_j). A small set of anchor
examples per task (medoids of clusters of the examples' item parameters, as in tinyBenchmarks) is then enough to
place a new candidate (theta from its anchors alone, items fixed) and to predict its accuracy on the examples it
never saw (the p-IRT estimator: observed anchors plus predicted rest).

A surrogate (a Gaussian process over the genomes, fitted to every candidate's noisy score) ranks the candidates of a
search on few examples for the end's re-scoring: neighbours in genome space share their examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# -- racing ---------------------------------------------------------------------------------------------------------


def bernstein_serfling_radius(values: np.ndarray, population: int, delta: float, value_range: float) -> float:
    """Half-width r such that, with probability ≥ 1 − delta, the population mean is ≤ mean(values) + r, where
    `values` are the first n of a uniformly random order of `population` values lying in an interval of width
    `value_range` (Bardenet & Maillard 2015, Thm 3 with the constant of their Thm 2)."""
    n = len(values)
    if n >= population:
        return 0.0
    if n < 2:
        return value_range
    log_term = math.log(5.0 / delta)
    rho = (1 - (n - 1) / population) if n <= population / 2 else (1 - n / population) * (1 + 1 / n)
    sd = float(np.std(values, ddof=0))
    kappa = 7 / 3 + 3 / math.sqrt(2)
    return sd * math.sqrt(2 * rho * log_term / n) + kappa * value_range * log_term / n


def bayes_radius(values: np.ndarray, population: int, delta: float, value_range: float) -> float:
    """Half-width of a one-sided 1 − delta posterior bound on the population mean, given the first n values of a
    random order. The unseen N − n values are a Dirichlet-multinomial draw around the seen ones (one pseudo-value
    at each end of the range keeps the spread honest when few, identical values have been seen)."""
    n = len(values)
    if n >= population:
        return 0.0
    prior = np.array([-value_range / 2, value_range / 2])
    var = float(np.var(np.concatenate([values, prior]), ddof=0))
    m, alpha = population - n, n + len(prior)
    # Var(total of m unseen) = m σ² (α + m) / (α + 1) for a Dirichlet-multinomial of concentration α
    sd_mean = math.sqrt(m * var * (alpha + m) / (alpha + 1)) / population
    return float(_normal_quantile(1 - delta)) * sd_mean


def _normal_quantile(p: float) -> float:
    return math.sqrt(2) * float(torch.special.erfinv(torch.tensor(2 * p - 1, dtype=torch.float64)))


BOUNDS = {"bayes": bayes_radius, "bernstein": bernstein_serfling_radius}


def race_order(sizes: dict[str, int], seed: int) -> list[tuple[str, int]]:
    """Every (task, example index) in one fixed random order, stratified: any prefix holds each task in proportion
    to its size, so that a prefix's mean estimates the weighted objective. The same order for every candidate, so
    that differences are paired."""
    rng = np.random.default_rng(seed)
    total = sum(sizes.values())
    perms = {t: rng.permutation(n).tolist() for t, n in sizes.items()}
    taken = dict.fromkeys(sizes, 0)
    order = []
    for k in range(1, total + 1):
        # the task furthest behind its proportional share goes next (ties: the config's task order)
        task = max(sizes, key=lambda t: k * sizes[t] / total - taken[t])
        order.append((task, perms[task][taken[task]]))
        taken[task] += 1
    return order


@dataclass(frozen=True)
class RaceResult:
    stopped: bool  # True: it was shown (with probability ≥ 1 − delta) not to beat the reference
    seen: int  # how many examples of the order were scored
    difference: float  # estimated objective difference candidate − reference (exact when nothing was skipped)
    upper: float  # the upper confidence bound on that difference


class Race:
    """The paired race of one candidate against a reference's per-example scores, over `order`.

    `per_example_weight[task]` turns a task's per-example difference into its share of the objective, scaled so that
    the objective difference is the mean of the scaled differences over all examples."""

    def __init__(self, order: list[tuple[str, int]], reference: dict[str, list[float]], weights: dict[str, float],
                 delta: float, looks: int, bound: str = "bayes"):
        self.order, self.reference = order, reference
        total, wsum = len(order), sum(weights.values())
        sizes = {t: len(v) for t, v in reference.items()}
        self.scale = {t: total * weights[t] / (wsum * sizes[t]) for t in sizes}
        self.range = 2 * max(self.scale.values())  # per-example scores lie in [0, 1]
        self.delta = delta / max(1, looks)  # a union bound over the looks taken
        self.diffs: list[float] = []
        self.radius = BOUNDS[bound]

    def add(self, task: str, index: int, score: float) -> None:
        self.diffs.append(self.scale[task] * (score - self.reference[task][index]))

    def result(self) -> RaceResult:
        d = np.asarray(self.diffs, dtype=float)
        mean = float(d.mean()) if len(d) else 0.0
        # the seen mean estimates the whole split's (the order is stratified); the bound covers the unseen rest
        upper = mean + self.radius(d, len(self.order), self.delta, self.range)
        return RaceResult(stopped=upper < 0 and len(d) < len(self.order), seen=len(d), difference=mean, upper=upper)


# -- IRT ------------------------------------------------------------------------------------------------------------


@dataclass
class IrtModel:
    """Item parameters of a fitted multidimensional 2PL model: a [items, dim], b [items]."""

    a: torch.Tensor
    b: torch.Tensor

    def probabilities(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(theta @ self.a.T + self.b)

    def ability(self, items: np.ndarray, correct: np.ndarray, steps: int = 200, prior: float = 1.0) -> torch.Tensor:
        """A model's theta from its answers on `items` alone (item parameters fixed; a N(0, prior²) prior keeps it
        finite when every answer is right or wrong)."""
        dim = self.a.shape[1]
        theta = torch.zeros(dim, dtype=torch.float64, requires_grad=True)
        a, b = self.a[items], self.b[items]
        y = torch.as_tensor(correct, dtype=torch.float64)
        opt = torch.optim.LBFGS([theta], max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            logits = a @ theta + b
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
            loss = loss + 0.5 * (theta**2).sum() / prior**2
            loss.backward()
            return loss

        opt.step(closure)
        return theta.detach()


def fit_irt(correct: np.ndarray, observed: np.ndarray | None = None, dim: int = 2, steps: int = 300,
            seed: int = 0) -> tuple[IrtModel, torch.Tensor]:
    """Fit item parameters and abilities to a [models, items] 0/1 matrix (`observed` masks the entries that were
    scored). Small Gaussian priors on every parameter keep items that every model answers alike finite."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.as_tensor(correct, dtype=torch.float64)
    mask = torch.ones_like(y) if observed is None else torch.as_tensor(observed, dtype=torch.float64)
    m, n = y.shape
    theta = (0.1 * torch.randn(m, dim, generator=gen, dtype=torch.float64)).requires_grad_()
    a = (0.1 * torch.randn(n, dim, generator=gen, dtype=torch.float64) + 1.0).requires_grad_()
    b = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta, a, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = theta @ a.T + b
        nll = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * mask).sum()
        loss = nll + 0.5 * ((theta**2).sum() + ((a - 1.0) ** 2).sum() / 4 + (b**2).sum() / 9)
        loss.backward()
        return loss

    opt.step(closure)
    return IrtModel(a.detach(), b.detach()), theta.detach()


def choose_anchors(features: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """k anchor items: the medoids of k-means clusters of the items' features, with each cluster's share of the
    items as its weight. Returns (anchor indices, weights summing to 1)."""
    n = len(features)
    if k >= n:
        return np.arange(n), np.full(n, 1 / n)
    rng = np.random.default_rng(seed)
    x = (features - features.mean(0)) / (features.std(0) + 1e-9)
    centers = x[_kmeans_pp(x, k, rng)]
    for _ in range(iters):
        assign = ((x[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1)
        new = np.stack([x[assign == c].mean(0) if (assign == c).any() else centers[c] for c in range(k)])
        if np.allclose(new, centers):
            break
        centers = new
    assign = ((x[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1)
    anchors, weights = [], []
    for c in range(k):
        members = np.flatnonzero(assign == c)
        if len(members) == 0:
            continue
        medoid = members[((x[members] - centers[c]) ** 2).sum(-1).argmin()]
        anchors.append(int(medoid))
        weights.append(len(members) / n)
    return np.asarray(anchors), np.asarray(weights)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    chosen = [int(rng.integers(len(x)))]
    d2 = ((x - x[chosen[0]]) ** 2).sum(-1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1 / len(x))
        chosen.append(int(rng.choice(len(x), p=p)))
        d2 = np.minimum(d2, ((x - x[chosen[-1]]) ** 2).sum(-1))
    return chosen


def p_irt(model: IrtModel, items: np.ndarray, anchors: np.ndarray, correct_on_anchors: np.ndarray) -> float:
    """The accuracy over `items` of a model seen only on `anchors` (a subset of items): its observed anchor
    answers plus the fitted model's probabilities for every other item."""
    theta = model.ability(anchors, correct_on_anchors)
    p = model.probabilities(theta[None])[0].numpy()
    rest = np.setdiff1d(items, anchors)
    return float((np.sum(correct_on_anchors) + p[rest].sum()) / len(items))


# -- a stratified sample --------------------------------------------------------------------------------------------


def settled_examples(rows: list[tuple[Sequence[int], Sequence[float]]]) -> set[int]:
    """The examples of one task that every row scored alike, among those seen by at least two rows. A row: (the
    indices it scored, its scores in that order)."""
    seen: dict[int, list[float]] = {}
    for idx, vals in rows:
        for i, v in zip(idx, vals, strict=True):
            seen.setdefault(i, []).append(v)
    return {i for i, vals in seen.items() if len(vals) >= 2 and min(vals) == max(vals)}


def stratified_draw(n: int, settled: set[int], size: int, settled_share: float,
                    rng: np.random.Generator) -> list[tuple[list[int], int]]:
    """`size` of a task's n examples in two strata, the open ones and the settled ones, the settled getting
    `settled_share` of the draw (at least one, when there are any; all of it, when nothing is open). Returns the
    strata as (drawn indices, stratum size); without settled examples, one plain random sample."""
    calm = sorted(settled)
    open_ = sorted(set(range(n)) - settled)
    k_calm = 0 if not calm else len(calm) if not open_ else min(len(calm), max(1, round(settled_share * size)))
    k_calm = min(k_calm, size)
    k_open = min(len(open_), size - k_calm)
    return [(sorted(int(i) for i in rng.choice(pool, k, replace=False)), len(pool))
            for pool, k in ((open_, k_open), (calm, k_calm)) if k]


def stratified_mean(scores: dict[int, float], strata: list[tuple[list[int], int]]) -> float:
    """The whole task's mean from the strata's samples: each stratum's sample mean weighted by the stratum's size
    (unbiased for the task's mean)."""
    total = sum(size for _, size in strata)
    return float(sum(size * np.mean([scores[i] for i in drawn]) for drawn, size in strata) / total)


# -- a surrogate over the genomes --------------------------------------------------------------------------------

SURROGATE_LENGTHS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0)  # in genome units (each gene in [0, 1])
SURROGATE_NOISE = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)  # noise variance over signal variance
SURROGATE_MAX = 1000  # candidates fitted at most (the fit is cubic in their number): the latest


def surrogate_means(genomes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, dict]:
    """Each candidate's score smoothed over its neighbours: the posterior mean at its genome of a Gaussian process
    (constant mean, squared-exponential kernel, homoscedastic noise) fitted to every candidate's noisy score.
    Candidates close in genome space have close fitness, so a candidate seen on a few examples borrows the examples
    its neighbours were seen on (and the draws they were seen on: an easy or a hard draw of one generation weighs
    less). The length scale and the noise variance (over the signal's) are those of the grids above with the highest
    marginal likelihood (the signal variance in closed form), so nothing is tuned by hand. Returns (means, the
    fit)."""
    x = np.asarray(genomes, dtype=float)
    y = np.asarray(scores, dtype=float)
    n, mu = len(y), float(y.mean())
    yc = y - mu
    if n < 3 or not yc.any():
        return y.copy(), {}
    sq = (x**2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)  # squared distances, without an n × n × dim array
    np.fill_diagonal(d2, 0.0)
    # lengths below the typical distance to a candidate's nearest neighbour leave every candidate uncorrelated with
    # the others: the likelihood cannot tell signal from noise there, and a fit that trusts every score may win by
    # chance. Of the rest, the smoothest fits first, a less smooth one only where it is clearly likelier.
    nearest = float(np.median(np.sqrt(np.sort(d2, axis=1)[:, 1])))
    lengths = [ell for ell in SURROGATE_LENGTHS if ell >= nearest] or [max(SURROGATE_LENGTHS)]
    best = None
    for ell in sorted(lengths, reverse=True):
        corr = np.exp(-d2 / (2 * ell**2))
        for ratio in sorted(SURROGATE_NOISE, reverse=True):
            chol = np.linalg.cholesky(corr + ratio * np.eye(n))
            z = np.linalg.solve(chol, yc)
            s2 = float(z @ z) / n  # the signal variance that maximizes the likelihood
            loglik = -0.5 * n * math.log(s2) - float(np.log(np.diag(chol)).sum())
            if best is None or loglik > best[0] + 1e-3:
                best = (loglik, ell, ratio, corr, chol)
    assert best is not None  # both grids are non-empty
    _, ell, ratio, corr, chol = best
    alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, yc))
    return mu + corr @ alpha, {"length": ell, "noise_ratio": ratio}


# -- racing a candidate inside its evaluation ----------------------------------------------------------------------


@dataclass(frozen=True)
class RaceSpec:
    """What a worker needs to race one candidate: the order, the reference's scores and objective, the bound."""

    order: tuple[tuple[str, int], ...]
    reference: dict[str, list[float]]  # the reference's per-example scores, every example of every task
    reference_per_task: dict[str, float]
    reference_objective: float
    weights: dict[str, float]
    delta: float
    batch: int
    bound: str = "bayes"
    per_task: bool = False  # one objective per task: stop only when worse on every task (dominated)


def race_score(scorer, model, spec: RaceSpec):
    """Score `model` in `spec.order`, a batch at a time, until it is shown not to beat the reference or every
    example is scored. Returns (Score, examples): examples is None when every example was scored (the score is
    then the full evaluation's), else the indices scored per task, with the score estimated from them."""
    from evomerge.fitness.base import Score, score_from_examples

    tasks = list(spec.reference)
    looks = -(-len(spec.order) // spec.batch)
    if spec.per_task:  # one race per task, δ shared among them
        races = {t: Race([o for o in spec.order if o[0] == t], {t: spec.reference[t]}, {t: 1.0},
                         spec.delta / len(tasks), looks, spec.bound) for t in tasks}
    else:
        races = {"*": Race(list(spec.order), spec.reference, spec.weights, spec.delta, looks, spec.bound)}
    seen: dict[str, dict[int, float]] = {t: {} for t in tasks}
    for start in range(0, len(spec.order), spec.batch):
        chunk: dict[str, list[int]] = {}
        for task, i in spec.order[start : start + spec.batch]:
            chunk.setdefault(task, []).append(i)
        part = scorer.score(model, chunk)
        for task, idx in chunk.items():
            for i, v in zip(idx, part.per_example[task], strict=True):
                seen[task][i] = v
                (races[task] if spec.per_task else races["*"]).add(task, i, v)
        results = {k: r.result() for k, r in races.items()}
        if all(r.stopped for r in results.values()):
            break
    complete = all(len(seen[t]) == len(spec.reference[t]) for t in tasks)
    per_example = {t: [seen[t][i] for i in sorted(seen[t])] for t in tasks}
    if complete:
        return score_from_examples(per_example, spec.weights), None
    # stopped: the paired estimate (the reference's score plus the mean difference seen) for each objective
    if spec.per_task:
        per_task = {t: spec.reference_per_task[t] + results[t].difference for t in tasks}
        wsum = sum(spec.weights.values())
        objective = sum(spec.weights[t] * per_task[t] for t in tasks) / wsum
    else:
        per_task = {t: sum(per_example[t]) / len(per_example[t]) for t in tasks if per_example[t]}
        objective = spec.reference_objective + results["*"].difference
    return Score(objective, per_task, per_example), {t: sorted(seen[t]) for t in tasks}
