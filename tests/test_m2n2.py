"""M2N2: the algorithm's formulas and switches, exact resume, the digits reproduction (short), mosaics against an
explicit flat-vector reference on real (tiny) models, and the optimizer inside a real search."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from evomerge.config import M2N2Config, OptimizerConfig
from evomerge.errors import ConfigError, MergeError
from evomerge.m2n2 import threefry
from evomerge.m2n2.flat import FlatBackend
from evomerge.m2n2.niches import (Niches, NicheSettings, ThreefryDraws, attraction, competition, shared_fitness,
                                   slerp_scales, snap)
from evomerge.optim.state import decode, encode
from evomerge.merge.materialize import Merger
from evomerge.sources import SourcePool, load_state_dict
from evomerge.spaces.mosaic import MosaicSpace

S = np.array([[1, 1, 0, 0],
              [1, 0, 1, 0],
              [0, 0, 0, 1]], dtype=float)


# -- formulas ------------------------------------------------------------------------------------------------------
def test_shared_fitness_divides_each_example_by_its_takers():
    # z = [2, 1, 1, 1]: example 0 is shared by two members, the others by one each
    assert shared_fitness(S, 1.0).tolist() == [1.5, 1.5, 1.0]
    assert shared_fitness(S, 0.0).tolist() == [2.0, 2.0, 1.0]  # α = 0: plain accuracy counts (the GA)
    # an example nobody solves counts z = 1 (no division by zero)
    assert shared_fitness(np.array([[1.0, 0.0]]), 1.0).tolist() == [1.0]
    assert competition(S, 2.0)[0].tolist() == [0.25, 1.0, 0.0, 0.0]


def test_attraction_counts_what_b_solves_where_a_is_weak():
    shared = competition(S, 1.0)
    # relative to member 0: member 1 adds example 2 (1/1), member 2 adds example 3; 0 gains nothing over itself
    assert attraction(shared, 0).tolist() == [0.0, 1.0, 1.0]
    assert attraction(shared, 2).tolist() == [1.5, 1.5, 0.0]


def test_slerp_scales():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    ca, cb = slerp_scales(0.0, 0.5)
    assert np.allclose(ca * a + cb * b, [math.sqrt(0.5)] * 2)  # on the unit circle, halfway
    assert slerp_scales(1.0, 0.3) == (0.7, 0.3)  # parallel: linear interpolation
    assert slerp_scales(0.2, 0.0) == pytest.approx((1.0, 0.0))


def test_snap_to_the_nearest_unit_boundary():
    bounds = np.array([0, 10, 14, 100])
    assert [snap(s, bounds) for s in (0, 4, 5, 6, 11, 12, 13, 57, 58, 99)] == [0, 0, 0, 10, 10, 10, 14, 14, 100, 100]


# -- archive ---------------------------------------------------------------------------------------------------------
def _niches(**kw) -> Niches:
    settings = NicheSettings(**{"popsize": 3, **kw})
    return Niches(settings, FlatBackend(4), seed=0)


def test_replace_the_worst_fills_empty_slots_then_drops_the_argmin():
    n = _niches()
    for i, row in enumerate(S):
        assert n.offer(torch.full((4,), float(i)), row) == i
    # a child that solves nothing new loses to everyone and is discarded
    assert n.offer(torch.zeros(4), [0, 0, 0, 0]) is None
    # a child holding example 3 alone with example 1: member 2 (shared fitness 1 → 0.5) is now the worst
    assert n.offer(torch.full((4,), 9.0), [0, 1, 0, 1]) == 2
    assert n.members[2][0] == 9.0 and n.scores[2].tolist() == [0, 1, 0, 1]
    assert n.best() == 0  # the first member of the best mean score
    with pytest.raises(ValueError, match="examples"):
        n.offer(torch.zeros(4), [1, 0])


def test_parents_by_fitness_and_by_attraction():
    n = _niches()
    n.offer(torch.ones(4), [1, 1, 1, 0])
    n.offer(torch.ones(4), [1, 1, 1, 1])  # dominates member 0: nobody attracts it
    n.offer(torch.ones(4), [0, 0, 0, 0])  # scores nothing: never a parent
    picks = [n.parents() for _ in range(300)]
    assert {a for a, _ in picks} == {0, 1}
    assert all(b == 1 for a, b in picks if a == 0)  # only member 1 adds something to member 0
    # nothing attracts member 1: the second parent falls back to any filled member
    assert 2 not in {b for _, b in picks}


def test_crossover_switches():
    a, b = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 0.0, 1.0])
    split = _niches().cross(a, b)
    whole = _niches(split_point=False).cross(a, b)
    copy = _niches(crossover=False).cross(a, b)
    assert torch.equal(copy, a)
    # without a split point, the child is one SLERP of the parents: on their great circle (unit norm here)
    assert float(whole.norm()) == pytest.approx(1.0)
    # with a split point, the parameters before it mix with w and those after with 1 - w (seed 0: split 3)
    rng = np.random.default_rng(0)
    s, w = int(rng.integers(0, 4)), float(rng.random())
    (ca, cb), (ca2, cb2) = slerp_scales(0.0, w), slerp_scales(0.0, 1 - w)
    want = torch.tensor([ca if s > 0 else ca2, 0.0, 0.0, cb if s > 3 else cb2])
    assert torch.allclose(split, want)
    mutated = _niches(crossover=False, mutation_std=0.01).cross(a, b)
    assert not torch.equal(mutated, a) and float((mutated - a).abs().max()) < 0.1


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="popsize"):
        NicheSettings(popsize=1)
    with pytest.raises(ValueError, match="alpha"):
        NicheSettings(alpha=-1)


def _evolve(n: Niches, steps: int, target: torch.Tensor) -> None:
    for _ in range(steps):
        child = n.breed()
        n.offer(child, (child - target).abs().lt(0.02).double().numpy())


def test_state_resumes_exactly():
    target = torch.linspace(-0.05, 0.05, 40)
    make = lambda seed: Niches(NicheSettings(popsize=6, mutation_std=0.01), FlatBackend(40), seed)  # noqa: E731
    a = make(1)
    for _ in range(2):
        a.offer(torch.zeros(40), np.zeros(40))
    a.offer(torch.zeros(40) + 0.01, (target.abs() < 0.03).double().numpy())
    _evolve(a, 30, target)
    b = make(99)
    b.load_state(a.state())  # the archive's state, as the optimizer keeps it
    _evolve(a, 40, target)
    _evolve(b, 40, target)
    assert np.array_equal(a.scores, b.scores)
    assert all(torch.equal(x, y) for x, y in zip(a.members, b.members, strict=True) if x is not None)
    other = Niches(NicheSettings(popsize=6, alpha=0.0), FlatBackend(40), 1)
    with pytest.raises(ValueError, match="settings"):
        other.load_state(a.state())


def test_threefry_stream_resumes_exactly():
    target = torch.linspace(-0.05, 0.05, 40)
    make = lambda: Niches(NicheSettings(popsize=6, mutation_std=0.01), FlatBackend(40),
                          draws=ThreefryDraws(threefry.key(3)))
    a = make()
    a.offer(torch.zeros(40) + 0.01, (target.abs() < 0.03).double().numpy())
    a.offer(torch.zeros(40) - 0.01, (target.abs() > 0.03).double().numpy())
    _evolve(a, 30, target)
    b = make()
    b.load_state(decode(encode("m2n2", a.state()), "m2n2"))  # through the stored form: data, not a pickle
    _evolve(a, 40, target)
    _evolve(b, 40, target)
    assert np.array_equal(a.scores, b.scores)
    assert all(torch.equal(x, y) for x, y in zip(a.members, b.members, strict=True) if x is not None)
    with pytest.raises(ValueError, match="either a seed or"):
        Niches(NicheSettings(), FlatBackend(40))


# -- the reference code's random numbers ---------------------------------------------------------------------------
def test_threefry_draws_what_jax_draws():
    """Values recorded from jax 0.10.2 (jax.random, default settings) for PRNGKey(42): split(key, 3), and from its
    second key uniform(k, (3,)), randint(k, (), 0, 19210) and (0, 7), choice(k, 4, (2,), p), normal(k, (5,))."""
    k = threefry.key(42)
    assert threefry.split(k, 3) == [(1832780943, 270669613), (64467757, 2916123636), (2465931498, 255383827)]
    k1 = threefry.split(k, 4)[1]  # the i-th key of a split does not depend on how many are split off
    assert threefry.uniform(k1, 3).tolist() == [0.7276642322540283, 0.787867546081543, 0.18169426918029785]
    assert (threefry.randint(k1, 0, 19210), threefry.randint(k1, 0, 7)) == (855, 4)
    assert threefry.choice(k1, np.array([0.1, 0.0, 0.3, 0.6]), 2).tolist() == [2, 2]
    np.testing.assert_allclose(threefry.normal(k1, 5), [0.6057640314102173, 0.7990440726280212, -0.9089270234107971,
                                                        -0.6352575421333313, -1.2226585149765015], rtol=1e-6)
    assert abs(float(threefry.normal(k1, 19210).std()) - 1.0067459344863892) < 1e-6  # jnp.std of the same draws


def test_digits_with_the_reference_draws_is_the_reference_run():
    """SakanaAI/natural_niches (jax 0.10.2), M2N2 from scratch, seed 42: the best-train member classifies 87, 115 and
    151 of the 360 test images after 250, 500 and 1,000 passes (recorded). Drawing the same random numbers
    (random: threefry), evomerge's run is that run."""
    from evomerge.m2n2.digits import DigitsVariant, load_digits_split, run_variant

    res = run_variant(DigitsVariant(name="m2n2", init="scratch", forward_passes=1000), 42, 20, 250,
                      load_digits_split())
    curve = dict(res["curve"])
    assert [round(curve[k] * 360) for k in (250, 500, 1000)] == [87, 115, 151]


# -- the digits reproduction (short) --------------------------------------------------------------------------------
def test_digits_from_pretrained_halves_learns_all_digits():
    from evomerge.m2n2.digits import (
        DigitsVariant,
        correct,
        load_digits_split,
        pretrained_pair,
        run_variant,
    )

    data = load_digits_split()
    pre = pretrained_pair(data[0])
    starts = [float(correct(p, *data[1]).mean()) for p in pre]
    assert max(starts) < 0.5  # each knows only its half of the digits
    res = run_variant(DigitsVariant(name="m2n2", init="pretrained", forward_passes=400), 42, 20, 200, data, pre)
    assert res["test_acc"] > max(starts) + 0.1
    assert [p[0] for p in res["curve"]] == [0, 200, 400]


def test_digits_config_errors_name_the_field(tmp_path):
    from evomerge.m2n2.digits import load_config

    with pytest.raises(ConfigError, match=r"variants\[0\]\.init"):
        load_config({"kind": "m2n2_digits", "name": "x",
                     "variants": [{"name": "a", "init": "nope", "forward_passes": 10}]}, "f.yaml")
    with pytest.raises(ConfigError, match="repeat"):
        load_config({"kind": "m2n2_digits", "name": "x",
                     "variants": [{"name": "a", "init": "scratch", "forward_passes": 10}] * 2}, "f.yaml")


# -- mosaics on real models -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def f64_experts(tiny_zoo, tmp_path_factory):
    """The tiny zoo's experts in float64, so that mosaic and reference agree to ~1e-12, not to float32 rounding."""
    out = tmp_path_factory.mktemp("f64")
    dirs = []
    for name in ("base", "add", "cipher", "reverse"):
        d = out / name
        d.mkdir()
        sd = {k: v.double() if v.is_floating_point() else v for k, v in load_state_dict(tiny_zoo / name).items()}
        save_file(sd, d / "model.safetensors")
        shutil.copy(tiny_zoo / name / "config.json", d / "config.json")
        dirs.append(d)
    return dirs[0], dirs[1:]


@pytest.mark.parametrize(("rows", "task_vectors"), [(None, False), (7, False), (None, True), (7, True)])
def test_mosaics_materialize_what_a_flat_vector_reference_computes(f64_experts, rows, task_vectors):
    """The same M2N2 run twice: archive members as full flat parameter vectors (the paper's explicit form) and as
    mosaics, split points between tensors (rows None) or between blocks of 7 rows; every mosaic, materialized by the
    merge engine, must equal its flat twin. Over task vectors, the flat members are task vectors (SLERP between
    them) and the model is the base plus the member."""
    base, experts = f64_experts
    space = MosaicSpace(SimpleNamespace(rows=rows, task_vectors=task_vectors), len(experts), 0, sources=experts,
                        base=base)
    tensors = list(dict.fromkeys(u.name for u in space.units))
    sds = [load_state_dict(p) for p in experts]
    flat_base = torch.cat([load_state_dict(base)[n].reshape(-1) for n in tensors])
    flat_sources = [torch.cat([sd[n].reshape(-1) for n in tensors]) - (flat_base if task_vectors else 0)
                    for sd in sds]
    mosaic_be = space.backend()
    flat_be = FlatBackend(mosaic_be.size, boundaries=mosaic_be.boundaries)
    settings = NicheSettings(popsize=6)
    mosaic, flat = Niches(settings, mosaic_be, seed=5), Niches(settings, flat_be, seed=5)
    rng = np.random.default_rng(0)
    probes = rng.integers(0, mosaic_be.size, size=64)  # per-example "scores": thresholds on 64 parameters

    def score(x: torch.Tensor) -> np.ndarray:
        v = x[probes].numpy()
        return (v > np.median(v)).astype(float)

    for k in range(len(experts)):
        row = score(flat_sources[k])
        mosaic.offer(space.one_hot(k), row)
        flat.offer(flat_sources[k], row)
    replaced = 0
    for _ in range(40):
        cm, cf = mosaic.breed(), flat.breed()
        row = score(cf)
        slot = mosaic.offer(cm, row)
        assert flat.offer(cf, row) == slot
        replaced += slot is not None
    assert replaced >= 5  # the archive really turned over
    pool = SourcePool(base, experts)
    merger = Merger(pool)
    split_members = inside = 0
    owner = np.array([tensors.index(u.name) for u in space.units])
    for c, ref in zip(mosaic.members, flat.members, strict=True):
        recipe = space.decode(c.reshape(-1), seed=0)
        got = torch.cat([merger.merged_tensor(recipe, n).reshape(-1) for n in tensors])
        ref = ref + flat_base if task_vectors else ref
        assert torch.allclose(got, ref, rtol=0, atol=1e-12 * float(ref.abs().max())), float((got - ref).abs().max())
        split_members += len({tuple(np.round(r, 12)) for r in c}) > 1
        inside += any(len({tuple(np.round(r, 12)) for r in c[owner == t]}) > 1 for t in range(len(tensors)))
    assert split_members >= 1  # some member is a real mosaic: different coefficients in different units
    assert (inside >= 1) == (rows is not None)  # with row units, some tensor is itself split between sources
    if rows is not None:
        name = tensors[1]
        broken = recipe.model_copy(update={"groups": {k: v for k, v in recipe.groups.items()
                                                      if k != space.units[owner.tolist().index(1)].group}})
        with pytest.raises(MergeError, match=f"row groups of tensor {name}"):
            merger.merged_tensor(broken, name)


def _optimizer(space, seed: int, **m2n2):
    from evomerge.optim.m2n2 import M2N2Optimizer

    cfg = OptimizerConfig(type="m2n2", popsize=5, m2n2=M2N2Config(**m2n2))
    return M2N2Optimizer(cfg, space.dim, seed=seed, space=space)


def test_m2n2_optimizer_steady_state_resumes_exactly(tiny_zoo):
    experts = [tiny_zoo / n for n in ("add", "cipher", "reverse")]
    space = MosaicSpace(None, 3, 0, sources=experts)
    a = _optimizer(space, seed=3)
    first = [a.ask_one() for _ in range(4)]
    assert [np.flatnonzero(x.reshape(-1, 3)[0]).tolist() for x in first[:3]] == [[0], [1], [2]]  # the sources first
    rng = np.random.default_rng(1)

    def examples(x):  # a deterministic per-example row from the genome
        return (np.sin(np.arange(30) * (1 + x[:30].sum())) > 0).astype(float)

    def tell_some(opt, n):
        for _ in range(n):
            out = opt.outstanding()
            x = out[int(rng.integers(len(out)))]
            opt.tell_one(x, float(examples(x).mean()), examples(x) if rng.random() > 0.1 else None)
            opt.ask_one()

    tell_some(a, 6)
    b = _optimizer(space, seed=77)
    b.load_state(a.state())
    assert [x.tolist() for x in b.outstanding()] == [x.tolist() for x in a.outstanding()]
    state = rng.bit_generator.state
    tell_some(a, 10)
    rng.bit_generator.state = state
    tell_some(b, 10)
    assert [x.tolist() for x in a.outstanding()] == [x.tolist() for x in b.outstanding()]
    assert len(a.archive()) == len(b.archive()) >= 3
    for (ca, sa), (cb, sb) in zip(a.archive(), b.archive(), strict=True):
        assert np.array_equal(ca, cb) and np.array_equal(sa, sb)
    with pytest.raises(ValueError, match="not one of"):
        a.tell_one(np.zeros(space.dim), 0.0, None)
    with pytest.raises(RuntimeError, match="outstanding"):
        a.ask()


def test_m2n2_needs_the_mosaic_space(tmp_path, tiny_task_dir):
    from evomerge.config import load_experiment
    from evomerge.optim.m2n2 import M2N2Optimizer
    from tests.conftest import write_experiment

    with pytest.raises(ValueError, match="mosaic"):
        M2N2Optimizer(OptimizerConfig(type="m2n2"), 6, seed=0)
    path = write_experiment(tmp_path / "e.yaml", tiny_task_dir, optimizer={"type": "m2n2"})
    with pytest.raises(ConfigError, match="only work together"):
        load_experiment(path)
    path = write_experiment(tmp_path / "e.yaml", tiny_task_dir, optimizer={"type": "m2n2"},
                            space={"type": "mosaic", "operator": "ties"})
    with pytest.raises(ConfigError, match=r"space\.operator: not used by the mosaic space"):
        load_experiment(path)
    path = write_experiment(tmp_path / "e.yaml", tiny_task_dir, space={"type": "layer_weights", "task_vectors": True})
    with pytest.raises(ConfigError, match=r"space\.task_vectors: only used by the mosaic space"):
        load_experiment(path)


@pytest.mark.slow
@pytest.mark.parametrize("task_vectors", [False, True])
def test_m2n2_search_on_the_tiny_zoo(tmp_path, tiny_zoo, tiny_task_dir, task_vectors):
    """A real steady-state search: the sources seed the archive, children are linear per-tensor recipes (task
    arithmetic over the base with `task_vectors`), and the optimizer's snapshot holds the archive with the search
    split's per-example scores."""
    from evomerge.runner import Runner
    from evomerge.store import RunDir
    from tests.conftest import write_experiment

    path = write_experiment(tmp_path / "e.yaml", tiny_task_dir, space={"type": "mosaic", "task_vectors": task_vectors},
                            optimizer={"type": "m2n2", "generations": 2, "popsize": 5, "steady_state": True},
                            baselines={"enabled": False})
    runner = Runner(path, tmp_path / "run")
    runner.run()
    store = RunDir.open(tmp_path / "run").store()
    evals = store.evaluations("search")
    assert len(evals) == 10 and all(e.status == "ok" for e in evals)
    recipes = [json.loads(e.recipe) for e in evals]
    operator = "task_arithmetic" if task_vectors else "linear"
    assert all(r["operator"] == operator and r["granularity"] == "tensor" and r["normalize"] is False
               for r in recipes)
    for k in range(3):  # the sources themselves come first
        assert {tuple(g["weights"]) for g in recipes[k]["groups"].values()} == {tuple(float(i == k) for i in range(3))}
    state = decode(store.last_snapshot().state, "m2n2")["niches"]
    filled = [i for i, m in enumerate(state["members"]) if m is not None]
    history = json.loads(store.get_meta("archive_history"))
    store.close()
    assert len(filled) >= 3 and state["scores"].shape == (5, 90)  # 3 tasks x 30 examples
    # every popsize candidates the archive's members are recorded by label, for the report's diversity plot
    assert [h["evaluation"] for h in history] == [5, 10]
    assert set(history[0]["members"]) >= {"g0-0", "g0-1", "g0-2"} and len(history[-1]["members"]) == len(filled)
    from evomerge.reporting.html_report import render_report
    from evomerge.reporting.leaderboard import read_board

    board = read_board(tmp_path / "run")
    parents = {c.id: c.parents for c in board.candidates}
    assert all(not parents[f"g0-{k}"] for k in range(3))  # the sources are nobody's children
    labels = set(parents)
    bred = [p for c, p in parents.items() if p]
    assert bred and all(len(p) == 2 and set(p) <= labels for p in bred)  # children name two earlier candidates
    page = render_report(board)
    archive = page[page.index("id='archive'"):].split("</section>")[0]
    assert "<img" in archive and "Left out" not in archive


@pytest.mark.slow
def test_digits_kill_then_resume_equals_an_uninterrupted_run(tmp_path):
    """The digits reproduction keeps each (variant, seed) in the run's store: SIGKILL twice, `evomerge resume`, and
    the curves and table equal an uninterrupted run's; a finished (variant, seed) is never run again."""
    import os

    import yaml

    from evomerge.reporting.status import run_status
    from scripts.kill_resume import kill_and_resume

    exp = tmp_path / "digits.yaml"
    exp.write_text(yaml.safe_dump({
        "kind": "m2n2_digits", "name": "digits-kill", "runs": 2, "popsize": 10, "log_every": 200,
        "variants": [{"name": "m2n2", "init": "pretrained", "forward_passes": 400},
                     {"name": "ga", "init": "scratch", "forward_passes": 600, "alpha": 0.0, "attraction": False}]}))
    report = kill_and_resume(exp, tmp_path / "work", kills=2, seed=3, env=dict(os.environ), log=lambda *_: None)
    assert report["evaluations"] == 4
    assert report["same_sequence"] and report["same_best"] and report["same_results"], report
    assert report["lost"] == 0 and report["recomputed"] == [], report
    killed, ref = (json.loads((tmp_path / "work" / d / "results.json").read_text()) for d in ("killed", "reference"))
    assert [r["curve"] for r in killed["runs"]] == [r["curve"] for r in ref["runs"]]
    assert killed["schema_version"] == 2 and killed["kind"] == "m2n2_digits"
    s = run_status(tmp_path / "work" / "killed")
    assert s["state"] == "finished" and s["generations"] == {"done": 4, "total": 4}
    from typer.testing import CliRunner

    from evomerge.cli import app

    board = CliRunner().invoke(app, ["leaderboard", str(tmp_path / "work" / "killed"), "--format", "csv"])
    assert board.exit_code == 0 and "pretrained/m2n2/seed42" in board.stdout, board.stderr
    report = CliRunner().invoke(app, ["report", str(tmp_path / "work" / "killed")])
    assert report.exit_code == 0, report.stderr
