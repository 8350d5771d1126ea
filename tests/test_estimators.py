"""Racing bounds and IRT estimates on synthetic candidates of known accuracy."""

import json

import numpy as np
import pytest

from evomerge.fitness.estimators import (
    SURROGATE_LENGTHS,
    SURROGATE_NOISE,
    Race,
    bayes_radius,
    bernstein_serfling_radius,
    choose_anchors,
    fit_irt,
    p_irt,
    race_order,
    settled_examples,
    stratified_draw,
    stratified_mean,
    surrogate_means,
)


def _pair(rng, n, p_ref, shift):
    """Per-example scores of a reference and a candidate that agree on most examples (two merges of the same
    sources do), the candidate ahead by exactly `shift` examples."""
    ref = (rng.random(n) < p_ref).astype(float)
    cand = ref.copy()
    flip = rng.permutation(n)
    # differ on 15% of examples, balanced so that the totals differ by `shift`
    k = int(0.15 * n)
    wrong_to_right = [i for i in flip if ref[i] == 0][: (k + shift) // 2]
    right_to_wrong = [i for i in flip if ref[i] == 1][: (k - shift) // 2]
    cand[wrong_to_right] = 1
    cand[right_to_wrong] = 0
    assert cand.sum() - ref.sum() == len(wrong_to_right) - len(right_to_wrong)
    return ref, cand


def _race(ref, cand, order_seed, delta, batch=30, bound="bayes"):
    n = len(ref)
    order = race_order({"t": n}, order_seed)
    looks = -(-n // batch)
    race = Race(order, {"t": ref.tolist()}, {"t": 1.0}, delta, looks, bound=bound)
    for start in range(0, n, batch):
        for task, i in order[start : start + batch]:
            race.add(task, i, cand[i])
        res = race.result()
        if res.stopped:
            return res
    return race.result()


@pytest.mark.parametrize("radius", [bernstein_serfling_radius, bayes_radius])
def test_radius_closes_on_the_whole_population_and_shrinks_with_n(radius):
    rng = np.random.default_rng(0)
    v = rng.choice([-1.0, 0.0, 0.0, 0.0, 1.0], size=900)
    assert radius(v, 900, 0.05, 2.0) == 0.0
    radii = [radius(v[:n], 900, 0.05, 2.0) for n in (30, 90, 300, 600, 870)]
    assert radii == sorted(radii, reverse=True)


def test_bayes_bound_is_tighter_than_hoeffding():
    v = np.random.default_rng(0).choice([-1.0, 0.0, 0.0, 0.0, 1.0], size=300)
    hoeffding = np.sqrt(4 * np.log(1 / 0.05) / (2 * 300))  # sqrt(R² ln(1/δ) / 2n), no finite-population gain
    assert bayes_radius(v, 900, 0.05, 2.0) < hoeffding / 2


def test_race_order_is_stratified_and_complete():
    order = race_order({"a": 300, "b": 150, "c": 30}, seed=1)
    assert sorted(order) == sorted([(t, i) for t, n in (("a", 300), ("b", 150), ("c", 30)) for i in range(n)])
    for k in (48, 96, 240):
        counts = {t: sum(1 for task, _ in order[:k] if task == t) for t in "abc"}
        assert abs(counts["a"] - k * 300 / 480) <= 1 and abs(counts["c"] - k * 30 / 480) <= 1
    assert race_order({"a": 300, "b": 150, "c": 30}, seed=1) == order


@pytest.mark.parametrize("bound", ["bayes", "bernstein"])
@pytest.mark.parametrize("delta", [0.05, 0.2])
def test_racing_drops_a_better_candidate_no_more_often_than_delta(delta, bound):
    """The candidate is better on the full split (by one example), so full evaluation keeps it over the reference;
    racing may drop it only with probability ≤ delta. Fixed seeds, 300 trials."""
    rng = np.random.default_rng(42)
    wrong, trials = 0, 300
    for trial in range(trials):
        ref, cand = _pair(rng, 600, 0.7, shift=2)
        wrong += _race(ref, cand, order_seed=trial, delta=delta, bound=bound).stopped
    # the bound is conservative; allow binomial noise above delta (3 sd) so the test tells a broken bound only
    assert wrong / trials <= delta + 3 * np.sqrt(delta * (1 - delta) / trials)


def test_racing_stops_a_clearly_worse_candidate_early():
    rng = np.random.default_rng(7)
    seen = []
    for trial in range(20):
        ref, cand = _pair(rng, 900, 0.7, shift=-80)  # 0.089 below
        res = _race(ref, cand, order_seed=trial, delta=0.05)
        assert res.stopped
        assert res.upper < 0
        seen.append(res.seen)
    assert np.mean(seen) < 900 / 3


def test_a_race_that_sees_everything_is_exact():
    rng = np.random.default_rng(3)
    ref, cand = _pair(rng, 300, 0.6, shift=10)
    res = _race(ref, cand, order_seed=0, delta=0.05)
    assert not res.stopped and res.seen == 300
    assert res.difference == pytest.approx((cand.sum() - ref.sum()) / 300)


def _merge_like(rng, models, items, dim=3):
    """Correctness of models that, like merges of the same sources, are mixtures of a few sources' abilities."""
    sources = rng.normal(size=(3, dim)) * 1.5
    theta = rng.dirichlet([1, 1, 1], size=models) @ sources + 0.1 * rng.normal(size=(models, dim))
    a = rng.normal(1.0, 0.5, size=(items, dim))
    b = rng.normal(0.0, 1.5, size=items)
    return (rng.random((models, items)) < 1 / (1 + np.exp(-(theta @ a.T + b)))).astype(float)


def test_irt_estimates_unseen_models_better_than_their_anchors_alone():
    """Fit on 40 models, estimate 20 others from 30 anchors of 600 items (3 seeds): p-IRT's error is below the
    anchors' plain mean's (the estimate a fixed subset gives)."""
    irt_err, plain_err = [], []
    for seed in range(3):
        y = _merge_like(np.random.default_rng(seed), 60, 600)
        model, _ = fit_irt(y[:40], dim=2)
        features = np.concatenate([model.a.numpy(), model.b.numpy()[:, None]], axis=1)
        anchors, weights = choose_anchors(features, 30, seed=0)
        assert abs(weights.sum() - 1) < 1e-9 and len(set(anchors.tolist())) == len(anchors) == 30
        for row in y[40:]:
            irt_err.append(abs(p_irt(model, np.arange(600), anchors, row[anchors]) - row.mean()))
            plain_err.append(abs(row[anchors].mean() - row.mean()))
    assert np.mean(irt_err) < 0.85 * np.mean(plain_err)


# -- the sample estimator's stratified draw ---------------------------------------------------------------------


def test_settled_examples_are_those_every_row_scored_alike():
    rows = [([0, 1, 2, 3], [1.0, 0.0, 1.0, 1.0]), ([1, 2, 3, 4], [0.0, 0.0, 1.0, 1.0]), ([3], [1.0])]
    # 0 and 4: seen once; 1: 0 and 0; 2: 1 and 0; 3: three times 1
    assert settled_examples(rows) == {1, 3}
    assert settled_examples([]) == set()


def test_stratified_draw_gives_the_settled_their_share():
    rng = np.random.default_rng(0)
    strata = stratified_draw(300, set(range(200)), 20, 0.1, rng)
    assert [(len(d), n) for d, n in strata] == [(18, 100), (2, 200)]
    assert all(i >= 200 for i in strata[0][0]) and all(i < 200 for i in strata[1][0])
    assert [(len(d), n) for d, n in stratified_draw(300, set(), 20, 0.1, rng)] == [(20, 300)]  # nothing settled
    assert [(len(d), n) for d, n in stratified_draw(30, set(range(30)), 20, 0.1, rng)] == [(20, 30)]  # all settled
    assert [(len(d), n) for d, n in stratified_draw(30, set(range(25)), 20, 0.1, rng)] == [(5, 5), (2, 25)]


def test_a_stratified_sample_is_unbiased_and_ranks_with_less_noise():
    """Two candidates that answer 80% of 300 examples alike (settled) and differ on the rest, one ahead by 9
    examples: over 2,000 draws of 20, the stratified estimate's mean is each candidate's accuracy, and its paired
    difference is far less noisy than a plain random sample's (so a generation's ranking is right more often)."""
    rng = np.random.default_rng(5)
    n, settled = 300, set(range(240))
    base = (rng.random(n) < 0.8).astype(float)
    a, b = base.copy(), base.copy()
    a[240:] = (rng.random(60) < 0.5).astype(float)
    b[240:] = a[240:]
    flip = [i for i in range(240, 300) if a[i] == 1][:9]
    b[flip] = 0.0  # b is 9 examples (0.03) behind a
    strat, plain = [], []
    for _ in range(2000):
        strata = stratified_draw(n, settled, 20, 0.1, rng)
        strat.append((stratified_mean(dict(enumerate(a)), strata), stratified_mean(dict(enumerate(b)), strata)))
        idx = rng.choice(n, 20, replace=False)
        plain.append((a[idx].mean(), b[idx].mean()))
    strat, plain = np.array(strat), np.array(plain)
    se = strat.std(0) / np.sqrt(len(strat))
    assert np.all(np.abs(strat.mean(0) - [a.mean(), b.mean()]) < 4 * se)
    d_strat, d_plain = strat[:, 0] - strat[:, 1], plain[:, 0] - plain[:, 1]
    assert d_strat.std() < d_plain.std() / 1.5
    assert np.mean(d_strat > 0) > np.mean(d_plain > 0) + 0.1  # a ranked first more often


def test_a_surrogate_over_genomes_finds_the_best_of_noisily_scored_candidates():
    """Runs like CMA-ES's: 15 generations of 12 candidates in an 18-gene space, the cloud moving towards the optimum
    and shrinking, each candidate's true accuracy a smooth function of its genome, each scored on 60 examples
    (binomial noise, sd ~0.05, the spread of the true accuracies). Over 10 runs the surrogate's scores are far
    closer to the truth than the candidates' own, and the five it ranks first are truly better than the five their
    own scores rank first; on scores with no structure (every candidate 0.8) it shrinks them to the mean rather than
    invent a best."""
    rng = np.random.default_rng(0)
    gen = np.repeat(np.arange(15), 12)
    err, gain, shrink = [], [], []
    for _ in range(10):
        x = np.clip(0.5 + 0.01 * gen[:, None] + (0.15 - 0.005 * gen)[:, None] * rng.standard_normal((180, 18)), 0, 1)
        truth = 0.85 - 4 * ((x - 0.65) ** 2).mean(1)
        own = rng.binomial(60, truth) / 60
        smooth, fit = surrogate_means(x, own)
        assert fit["length"] in SURROGATE_LENGTHS and fit["noise_ratio"] in SURROGATE_NOISE
        err.append(np.abs(smooth - truth).mean() / np.abs(own - truth).mean())
        gain.append(truth[np.argsort(-smooth)[:5]].mean() - truth[np.argsort(-own)[:5]].mean())
        flat = rng.binomial(60, 0.8, 180) / 60
        shrink.append(surrogate_means(x, flat)[0].std() / flat.std())
    assert np.mean(err) < 0.6, err
    assert np.mean(gain) > 0.01 and np.mean(np.array(gain) > 0) >= 0.7, gain
    assert max(shrink) < 0.2, shrink


def test_cma_recommends_its_mean_and_other_optimizers_nothing():
    from evomerge.config import OptimizerConfig
    from evomerge.optim import OPTIMIZERS

    cma = OPTIMIZERS["cma"](OptimizerConfig(type="cma"), 4, seed=0)
    xs = cma.ask()
    cma.tell(xs, [float(-np.sum((x - 0.9) ** 2)) for x in xs])
    assert np.allclose(cma.recommendation(), np.clip(cma._es.mean, 0, 1))
    assert np.all((cma.recommendation() >= 0) & (cma.recommendation() <= 1))
    assert OPTIMIZERS["random"](OptimizerConfig(type="random"), 4, seed=0).recommendation() is None


@pytest.mark.parametrize("bad", [{"settled_share": 0}, {"settled_share": 1.0}, {"size": 0}, {"window": -1}])
def test_sample_settings_are_validated(tiny_task_dir, bad):
    from pydantic import ValidationError

    from evomerge.config import FitnessConfig

    with pytest.raises(ValidationError, match=f"sample.{next(iter(bad))}"):
        FitnessConfig.model_validate({"tasks": {"add": str(tiny_task_dir / "add")}, "estimator": "sample",
                                      "sample": bad})


# -- in a real search on the tiny zoo ----------------------------------------------------------------------------


def _cheap_run(tmp_path, tiny_task_dir, fitness, generations=4, fitness_type="native", optimizer=None, **extra):
    from rich.console import Console

    from evomerge.runner import Runner
    from evomerge.store import RunDir
    from tests.conftest import write_experiment

    if fitness_type == "lm_eval":
        from tests.test_lm_eval import _lm_eval_tasks

        tasks = _lm_eval_tasks(tiny_task_dir, tmp_path)
    else:
        tasks = {t: str(tiny_task_dir / t) for t in ("add", "cipher", "reverse")}
    exp = write_experiment(tmp_path / "exp.yaml", tiny_task_dir, baselines={"enabled": False},
                           space={"type": "layer_weights", "operator": "task_arithmetic", "granularity": "layer"},
                           optimizer=optimizer or {"type": "cma", "generations": generations, "popsize": 6},
                           fitness={"type": fitness_type, "tasks": tasks, "rescore_top": 2, **fitness}, **extra)
    results = Runner(exp, tmp_path / "run", console=Console(quiet=True)).run()
    store = RunDir.open(tmp_path / "run").store()
    try:
        return results, store.evaluations("search"), store.evaluations("rescore"), store.evaluations("seed")
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("fitness_type", ["native", "lm_eval"])
def test_race_stops_candidates_that_cannot_beat_the_incumbent(tmp_path, tiny_zoo, tiny_task_dir, fitness_type):
    results, search, rescored, known = _cheap_run(tmp_path, tiny_task_dir,
                                                  {"estimator": "race", "race": {"batch": 30}},
                                                  fitness_type=fitness_type)
    stopped = [e for e in search if e.examples is not None]
    assert stopped, "no candidate was stopped early"
    for e in stopped:  # the examples scored are recorded, per task, and the scores follow them
        assert all(len(e.per_example[t]) == len(e.examples[t]) for t in e.examples)
        assert sum(map(len, e.examples.values())) < 180
        # ranked by the paired estimate: below the incumbent, the best full score of the known candidates (the warm
        # start: sources, baselines) and the earlier generations
        full = [f for f in [*known, *search] if f.status == "ok" and f.examples is None and f.generation < e.generation]
        assert e.objective < max(f.objective for f in full)
    # the winner is chosen on full scores
    assert results["rescored"] and all(len(v) == 60 for r in rescored for v in r.per_example.values())
    assert results["best_candidate"] == results["rescored"][0]["label"]


@pytest.mark.slow
@pytest.mark.parametrize("fitness_type", ["native", "lm_eval"])
def test_irt_scores_anchors_and_estimates_the_rest(tmp_path, tiny_zoo, tiny_task_dir, fitness_type):

    results, search, rescored, _ = _cheap_run(tmp_path, tiny_task_dir,
                                              {"estimator": "irt", "irt": {"anchors": 8, "warmup": 1}},
                                              fitness_type=fitness_type)
    assert all(e.examples is None for e in search if e.generation == 0)
    later = [e for e in search if e.generation > 0 and e.worker != "cache"]
    assert later and all(sorted(map(len, e.examples.values())) == [8, 8, 8] for e in later)
    for e in later:  # an estimate of the whole split: observed anchors plus predicted rest, in [0, 1]
        assert 0 <= e.objective <= 1
        assert e.objective == pytest.approx(sum(e.per_task.values()) / 3)
    assert results["best_candidate"] == results["rescored"][0]["label"]



@pytest.mark.slow
@pytest.mark.parametrize("fitness_type", ["native", "lm_eval"])
def test_sample_scores_one_draw_per_generation_and_races_the_rescoring(tmp_path, tiny_zoo, tiny_task_dir,
                                                                       fitness_type):
    """estimator: sample — every candidate of a generation is scored on the same draw of `size` examples per task,
    a new draw each generation (the known candidates on one of their own); the end re-scores CMA-ES's final mean
    first, then the best by their scores smoothed over the genomes (surrogate), raced against the best re-scored in
    full, and the winner is a full score."""
    from evomerge.reporting.leaderboard import read_board

    results, search, rescored, known = _cheap_run(
        tmp_path, tiny_task_dir, {"estimator": "sample", "sample": {"size": 8}, "rescore_top": 4,
                                  "race": {"batch": 30, "delta": 0.2}}, fitness_type=fitness_type)
    draws = {}
    for e in [*known, *search]:
        assert sorted(map(len, e.examples.values())) == [8, 8, 8] and 0 <= e.objective <= 1
        assert draws.setdefault(e.generation, e.examples) == e.examples  # one draw per generation
    assert len({json.dumps(d, sort_keys=True) for d in draws.values()}) == len(draws)  # a new one each
    # settled examples: from the second generation on, the draw leans on the open examples (stratified estimate)
    assert any(e.objective != pytest.approx(sum(map(sum, e.per_example.values())) / 24) for e in search)
    rows = results["rescored"]
    by_idx = sorted(rescored, key=lambda e: e.idx)
    assert by_idx[0].label == "final-mean" and by_idx[0].examples is None  # the recommendation first, in full
    complete = [e for e in rescored if e.examples is None]
    assert all(len(v) == 60 for e in complete for v in e.per_example.values())
    assert results["best_candidate"] == rows[0]["label"] and rows[0]["rescore_examples"] is None
    assert rows[0]["full_search"] == max(e.objective for e in complete)
    for r, e in ((r, next(e for e in rescored if e.label == r["label"])) for r in rows):
        assert (r["heldout"] is None) == (e.examples is not None)  # only candidates scored in full go to held-out
    # every draw rests on the stored evaluations alone: a resumed run (a fresh Fidelity on the store) draws the same
    from evomerge.config import load_experiment
    from evomerge.fitness.fidelity import Fidelity
    from evomerge.store import RunDir

    cfg, _ = load_experiment(tmp_path / "exp.yaml")
    store = RunDir.open(tmp_path / "run").store()
    try:
        fresh = Fidelity(cfg, store, {t: 60 for t in ("add", "cipher", "reverse")})
        assert all(fresh._sample(g)[0] == d for g, d in draws.items())
        # the candidates re-scored after the mean: the best by their surrogate scores (sample.rescore)
        smooth, _ = surrogate_means(np.array([e.genome for e in [*known, *search]]),
                                    np.array([e.objective for e in [*known, *search]]))
        order = [e.label for _, e in sorted(zip(-smooth, [*known, *search], strict=True), key=lambda p: p[0])]
        assert [e.label for e in by_idx[1:]] == order[:4]
    finally:
        store.close()
    board = read_board(tmp_path / "run")  # a stopped re-scoring is never shown as a whole-split score
    stopped = {e.label for e in rescored if e.examples is not None}
    assert stopped, "the re-scoring's race stopped no candidate"
    assert all(c.full_search is None for c in board.candidates if c.id in stopped)


@pytest.mark.slow
def test_sample_rescore_generation_takes_each_generations_best(tmp_path, tiny_zoo, tiny_task_dir):
    """sample.rescore: generation — after the mean, each generation's best by its own score, the latest first."""
    _, _, rescored, _ = _cheap_run(tmp_path, tiny_task_dir, {"estimator": "sample", "rescore_top": 3,
                                                             "sample": {"size": 8, "rescore": "generation"}})
    by_idx = sorted(rescored, key=lambda e: e.idx)
    assert by_idx[0].label == "final-mean"
    assert [int(e.label[1:].split("-")[0]) for e in by_idx[1:]] == [3, 2, 1]


def test_an_optimizer_that_learns_from_every_example_refuses_a_cheaper_estimator(tmp_path, tiny_task_dir):
    """M2N2 needs every example's score: estimator race/irt is refused when the file is validated (before any run
    directory exists), naming the field."""
    from pydantic import ValidationError

    from evomerge.config import ExperimentConfig

    for estimator in ("race", "irt", "sample"):
        with pytest.raises(ValidationError, match="fitness.estimator: m2n2 learns from every example"):
            ExperimentConfig.model_validate({
                "name": "t", "zoo": "tiny", "sources": {"base": "zoo:base", "models": ["zoo:add", "zoo:cipher"]},
                "space": {"type": "mosaic"}, "optimizer": {"type": "m2n2"},
                "fitness": {"tasks": {"add": str(tiny_task_dir / "add")}, "estimator": estimator}})


def _settings(estimator: str) -> dict:
    """Each estimator's settings for the tiny zoo's 60-example tasks."""
    return {"race": {"race": {"batch": 30}}, "irt": {"irt": {"anchors": 8, "warmup": 1}},
            "sample": {"sample": {"size": 8}}}[estimator]


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["race", "irt", "sample"])
def test_estimators_with_one_objective_per_task(tmp_path, tiny_zoo, tiny_task_dir, estimator):
    """Multi-objective (fitness.objective: per_task, NSGA-II): each estimated result carries a score per task, and
    the run ends with a leaderboard re-scored on full splits. (A race stops a candidate only when it is worse
    than the reference on every task — dominated — which on these 60-example tasks rarely happens: IRT and sample
    are the estimators that must score fewer examples here.)"""
    fitness = {"estimator": estimator, "objective": "per_task", **_settings(estimator)}
    results, search, rescored, _ = _cheap_run(tmp_path, tiny_task_dir, fitness,
                                              optimizer={"type": "nsga2", "generations": 4, "popsize": 6})
    partial = [e for e in search if e.examples is not None]
    assert partial or estimator == "race", f"{estimator} scored every candidate on every example"
    for e in search:
        assert set(e.per_task) == {"add", "cipher", "reverse"} and all(0 <= v <= 1 for v in e.per_task.values())
    full = [r for r in rescored if r.examples is None]  # the re-scoring's race may stop a dominated candidate
    assert results["rescored"] and full and all(len(v) == 60 for r in full for v in r.per_example.values())


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["race", "irt", "sample"])
def test_estimators_on_ray_workers(tmp_path, tiny_zoo, tiny_task_dir, estimator):
    """The estimators run the same on Ray workers: the examples each evaluation used come back and are stored."""
    fitness = {"estimator": estimator, **_settings(estimator)}
    results, search, rescored, _ = _cheap_run(tmp_path, tiny_task_dir, fitness, generations=3,
                                              executor={"type": "ray", "workers": 2})
    partial = [e for e in search if e.examples is not None]
    assert partial and all(len(e.per_example[t]) == len(e.examples[t]) for e in partial for t in e.examples)
    assert {e.worker for e in search} - {"cache"}, "no evaluation came from a Ray worker"
    assert results["best_candidate"] == results["rescored"][0]["label"]
