"""lm-evaluation-harness fitness on the in-memory model: the same per-example correctness as the native scorer on
the zoo's generation tasks, and a search that runs end to end with it."""

import pytest
from rich.console import Console

from evomerge.config import FitnessConfig
from evomerge.fitness.lm_eval_scorer import load_task_config
from evomerge.fitness import make_scorer
from tests.conftest import REPO, write_experiment

pytestmark = pytest.mark.slow
TASKS = ("add", "cipher", "reverse")


def _lm_eval_tasks(task_dir, tmp_path, suffix=""):
    """The shipped task YAMLs, pointed at the tiny zoo's data (written beside a copy of each file)."""
    out = {}
    for t in TASKS:
        name = f"zoo_{t}{suffix}"
        text = (REPO / "fitness" / "lm_eval" / f"{name}.yaml").read_text()
        text = text.replace(f"../data/zoo/{t}{suffix}/", f"{task_dir}/{t}{suffix}/")
        (tmp_path / f"{name}.yaml").write_text(text)
        out[t] = str(tmp_path / f"{name}.yaml")
    return out


@pytest.mark.parametrize("model", ["base", "add", "reverse"])
def test_lm_eval_and_native_agree_per_example(tmp_path, tiny_zoo, tiny_task_dir, model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.fitness.tasks import load_split

    tok = AutoTokenizer.from_pretrained(tiny_zoo / model)
    m = AutoModelForCausalLM.from_pretrained(tiny_zoo / model).eval()
    files = _lm_eval_tasks(tiny_task_dir, tmp_path)
    lm_cfg = FitnessConfig(type="lm_eval", tasks=files)
    configs = {t: load_task_config(tmp_path / f"zoo_{t}.yaml", "search", t) for t in TASKS}
    lm_score = make_scorer(tok, configs, lm_cfg, tmp_path).score(m)
    examples = {t: load_split(tiny_task_dir / t, "search", t) for t in TASKS}
    for mode in ("generate", "teacher_forced"):
        native = make_scorer(tok, examples, FitnessConfig(tasks=files, mode=mode), tmp_path).score(m)
        assert native.per_example == {t: [float(v) for v in lm_score.per_example[t]] for t in TASKS}
    assert 0 < lm_score.objective < 1 or model == "base"


@pytest.mark.parametrize("model", ["base", "cipher"])
def test_multiple_choice_lm_eval_and_native_agree_per_example(tmp_path, tiny_zoo, tiny_task_dir, model):
    """The same choice wins under lm-eval's log-likelihood requests and the native scorer's one forward pass."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.fitness.tasks import load_split

    tok = AutoTokenizer.from_pretrained(tiny_zoo / model)
    m = AutoModelForCausalLM.from_pretrained(tiny_zoo / model).eval()
    files = _lm_eval_tasks(tiny_task_dir, tmp_path, suffix="_mc")
    configs = {t: load_task_config(files[t], "search", t) for t in TASKS}
    lm_score = make_scorer(tok, configs, FitnessConfig(type="lm_eval", tasks=files), tmp_path).score(m)
    examples = {t: load_split(tiny_task_dir / f"{t}_mc", "search", t) for t in TASKS}
    assert all(len(examples[t][0]["choices"]) == 4 for t in TASKS)
    native = make_scorer(tok, examples, FitnessConfig(tasks=files), tmp_path).score(m)
    assert native.per_example == lm_score.per_example
    assert 0.25 < native.objective < 1  # better than chance, not trivial


def test_registered_task_names_split_mapping_and_generation_settings(tmp_path, tiny_zoo, tiny_task_dir):
    """Tasks by name (from fitness.lm_eval.include_path, as from lm-eval's registry), the experiment's splits mapped
    onto the dataset's, and max_gen_toks passed through: one new token cannot spell a two-digit sum."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.config import load_experiment
    from evomerge.runner import resolve_tasks

    _lm_eval_tasks(tiny_task_dir, tmp_path)
    tasks = {"add": {"source": "zoo_add", "splits": {"search": "search", "heldout": "heldout"}}}
    exp = write_experiment(tmp_path / "e.yaml", tiny_task_dir, fitness={
        "type": "lm_eval", "tasks": tasks, "lm_eval": {"include_path": str(tmp_path)}, "max_examples": 30})
    cfg, base_dir = load_experiment(exp)
    resolved = resolve_tasks(cfg, base_dir)
    tok = AutoTokenizer.from_pretrained(tiny_zoo / "add")
    m = AutoModelForCausalLM.from_pretrained(tiny_zoo / "add").eval()
    full = make_scorer(tok, resolved["search"], cfg.fitness, base_dir, limit=30).score(m)
    assert full.per_task["add"] > 0.5
    short_cfg = cfg.fitness.model_copy(update={"lm_eval": cfg.fitness.lm_eval.model_copy(update={"max_gen_toks": 1})})
    short = resolve_tasks(cfg.model_copy(update={"fitness": short_cfg}), base_dir)
    assert short["search"]["add"]["generation_kwargs"]["max_gen_toks"] == 1
    assert make_scorer(tok, short["search"], short_cfg, base_dir, limit=30).score(m).per_task["add"] == 0.0


def test_registry_names_are_checked_against_lm_eval(tmp_path, tiny_task_dir):
    """Real registry entries: a near-miss names the task, a group is refused, and searching on a benchmark's test
    split through a split mapping is refused before any data is needed."""
    from evomerge.config import load_experiment
    from evomerge.errors import ConfigError
    from evomerge.runner import resolve_tasks

    def resolve(tasks, **kw):
        exp = write_experiment(tmp_path / "e.yaml", tiny_task_dir, fitness={"type": "lm_eval", "tasks": tasks, **kw})
        return resolve_tasks(*load_experiment(exp))

    with pytest.raises(ConfigError, match=r"fitness.tasks.a: 'arc_easyy' is neither .*did you mean 'arc_easy'"):
        resolve({"a": "arc_easyy"})
    with pytest.raises(ConfigError, match=r"fitness.tasks.m: 'mmlu' is a group"):
        resolve({"m": "mmlu"})
    with pytest.raises(ConfigError, match=r"fitness.tasks.a: lm-eval task 'arc_easy' calls 'test' its test split"):
        resolve({"a": {"source": "arc_easy", "splits": {"search": "test", "heldout": "validation"}}})


def test_language_check_counts_only_answers_that_pass(tmp_path, tiny_zoo, tiny_task_dir):
    """A per-example check (here: the answer must be digits only) in both native modes and in lm-eval."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.fitness.tasks import load_split

    tok = AutoTokenizer.from_pretrained(tiny_zoo / "base")
    m = AutoModelForCausalLM.from_pretrained(tiny_zoo / "base").eval()
    files = _lm_eval_tasks(tiny_task_dir, tmp_path)
    examples = {t: load_split(tiny_task_dir / t, "search", t) for t in TASKS}
    plain = make_scorer(tok, examples, FitnessConfig(tasks=files), tmp_path).score(m)
    checked_tasks = {t: {"source": f, "check": "regex:[0-9]+"} for t, f in files.items()}
    for mode in ("teacher_forced", "generate"):
        checked = make_scorer(tok, examples, FitnessConfig(tasks=checked_tasks, mode=mode), tmp_path).score(m)
        assert checked.per_task["add"] == plain.per_task["add"] > 0  # sums are digits
        assert checked.per_task["cipher"] == checked.per_task["reverse"] == 0.0 < plain.per_task["reverse"]
    configs = {t: load_task_config(files[t], "search", t) for t in TASKS}
    lm = make_scorer(tok, configs, FitnessConfig(type="lm_eval", tasks=checked_tasks), tmp_path).score(m)
    assert lm.per_example == checked.per_example


def test_kept_requests_give_each_candidate_its_own_answers(tmp_path, tiny_zoo, tiny_task_dir):
    """One scorer reuses lm-eval's built requests across candidates: scoring A, B, A gives A's and B's own scores
    (responses never carry over), equal to fresh scorers'."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_zoo / "base")
    models = {n: AutoModelForCausalLM.from_pretrained(tiny_zoo / n).eval() for n in ("add", "reverse")}
    files = _lm_eval_tasks(tiny_task_dir, tmp_path)
    cfg = FitnessConfig(type="lm_eval", tasks=files)
    configs = {t: load_task_config(files[t], "search", t) for t in TASKS}
    shared = make_scorer(tok, configs, cfg, tmp_path, limit=20)
    got = [shared.score(models[n]).per_example for n in ("add", "reverse", "add")]
    fresh = {n: make_scorer(tok, configs, cfg, tmp_path, limit=20).score(m).per_example for n, m in models.items()}
    assert got == [fresh["add"], fresh["reverse"], fresh["add"]] and fresh["add"] != fresh["reverse"]


def test_search_with_lm_eval_fitness(tmp_path, tiny_zoo, tiny_task_dir):
    from evomerge.runner import Runner

    exp = write_experiment(tmp_path / "exp.yaml", tiny_task_dir,
                           fitness={"type": "lm_eval", "tasks": _lm_eval_tasks(tiny_task_dir, tmp_path),
                                    "max_examples": 20})
    results = Runner(exp, tmp_path / "run", console=Console(quiet=True)).run()
    assert results["examples"] == 3 * 60  # held-out: every example, not the search cap
    assert results["search"]["evaluations"] == 8 and results["search"]["failed"] == 0
    assert all(0 <= r["average"] <= 1 for r in results["rows"])


def test_missing_split_in_a_task_file_is_named(tmp_path):
    (tmp_path / "t.yaml").write_text("task: t\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    search: a.jsonl\n")
    from evomerge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"fitness.tasks.t: .* has no data file for split 'heldout'"):
        load_task_config(tmp_path / "t.yaml", "heldout", "fitness.tasks.t")
    with pytest.raises(ConfigError, match=r"fitness.tasks.t \(lm-eval task file\): .* not found"):
        load_task_config(tmp_path / "nope.yaml", "search", "fitness.tasks.t")


def test_contamination_guard(tmp_path, tiny_task_dir):
    """Searching on a split the task file calls its test split is refused unless allowed; search and held-out
    splits that share documents are refused (by a hash of text and target)."""
    from evomerge.config import load_experiment
    from evomerge.errors import ConfigError
    from evomerge.runner import resolve_tasks

    files = _lm_eval_tasks(tiny_task_dir, tmp_path)
    fitness = {"type": "lm_eval", "tasks": files, "search_split": "heldout", "heldout_split": "search"}
    exp = write_experiment(tmp_path / "e.yaml", tiny_task_dir, fitness=fitness)
    with pytest.raises(ConfigError, match=r"fitness.tasks.add: .* calls 'heldout' its test split; searching on it"):
        resolve_tasks(*load_experiment(exp))
    exp = write_experiment(tmp_path / "e.yaml", tiny_task_dir, fitness={**fitness, "allow_test_split": True})
    assert set(resolve_tasks(*load_experiment(exp))) == {"heldout", "search"}

    leaky = tmp_path / "zoo_add.yaml"
    leaky.write_text(leaky.read_text().replace(f"{tiny_task_dir}/add/heldout.jsonl",
                                               f"{tiny_task_dir}/add/search.jsonl"))
    exp = write_experiment(tmp_path / "e.yaml", tiny_task_dir, fitness={"type": "lm_eval", "tasks": files})
    with pytest.raises(ConfigError, match=r"fitness.tasks.add: 60 documents appear in both the 'search' and "
                                          r"'heldout' splits"):
        resolve_tasks(*load_experiment(exp))

    native = write_experiment(tmp_path / "n.yaml", tiny_task_dir,
                              fitness={"type": "native", "tasks": {"add": str(tiny_task_dir / "add")},
                                       "search_split": "test"})
    with pytest.raises(ConfigError, match="fitness.search_split: 'test' is a benchmark's test split"):
        resolve_tasks(*load_experiment(native))
