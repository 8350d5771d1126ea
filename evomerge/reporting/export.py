"""Export a recipe as a standard Hugging Face model directory, with a model card and (when mergekit can express
the recipe) a mergekit YAML that reproduces it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.errors import ConfigError, MergeError, format_validation_error
from evomerge.merge import OPERATORS
from evomerge.merge.materialize import Merger
from evomerge.recipe import FlowRecipe, Recipe, parse_recipe
from evomerge.sources import SourcePool, checkpoint_dtype

# Operators whose mergekit method has the same name and meaning, and the rescale values mergekit can express.
_MERGEKIT_RESCALE = {"l1": True, "none": False}


def mergekit_config(recipe: Recipe, base: Path, sources: list[Path], dtype: torch.dtype | None = None) -> dict | None:
    """The mergekit 0.1.5 YAML config equal to `recipe`, or None when mergekit cannot express it.

    Expressible: one group for the whole model (per-layer groups would need mergekit gradients that interpolate),
    and for random drops a rescale mergekit has (l1 or none; its masks still come from its own RNG). mergekit
    computes in the config's `dtype`, so it is the dtype the merge was made in (default: the base's)."""
    if recipe.granularity != "model" or len(recipe.groups) != 1 or recipe.operator not in OPERATORS:
        return None
    op = OPERATORS[recipe.operator]
    dtype_name = str(dtype or checkpoint_dtype(base)).removeprefix("torch.")
    (params,) = recipe.groups.values()
    if recipe.operator == "slerp":
        if params.scale != 1:
            return None
        return {"merge_method": "slerp", "base_model": str(base),
                "models": [{"model": str(base)}, {"model": str(sources[0])}],
                "parameters": {"t": params.weights[0]}, "dtype": dtype_name}
    models = []
    for i, src in enumerate(sources):
        p = {"weight": params.weights[i]}
        if op.uses_density:
            p["density"] = params.densities[i] if params.densities else 1.0
            if op.sparsify == "outliers":
                p["gamma"] = recipe.gamma
            if op.sparsify == "della":
                p["epsilon"] = recipe.epsilon
        models.append({"model": str(src), "parameters": p})
    cfg: dict = {"merge_method": recipe.operator, "models": models, "dtype": dtype_name}
    shared: dict = {}
    if recipe.normalize is not None:
        shared["normalize"] = recipe.normalize
    if op.uses_base:
        cfg["base_model"] = str(base)
        if recipe.lam * params.scale != 1:
            shared["lambda"] = recipe.lam * params.scale
        if op.sparsify is not None:
            rescale = recipe.rescale or op.default_rescale
            if rescale not in _MERGEKIT_RESCALE:
                return None  # the papers' 1/p rescaling is not a mergekit option
            shared["rescale"] = _MERGEKIT_RESCALE[rescale]
    elif recipe.lam * params.scale != 1:
        return None
    if shared:
        cfg["parameters"] = shared
    return cfg


def _model_card(recipe: Recipe, base: Path, sources: list[Path], provenance: dict) -> str:
    front = {"library_name": "transformers", "tags": ["merge", "evomerge"], "base_model": str(base)}
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# Merged model ({recipe.operator})", "",
        "Made by evomerge from these sources:", "",
        f"- base: `{base}`", *[f"- `{s}`" for s in sources], "",
        "## How it was found", "",
        *[f"- {k}: {v}" for k, v in provenance.items()], "",
        "## Recipe", "", "Materialize it again with `evomerge` from `evomerge_recipe.json`:", "",
        "```json", json.dumps(json.loads(recipe.to_json()), indent=2), "```", "",
    ]
    return "\n".join(lines)


def export_recipe(recipe: Recipe, base: Path, sources: list[Path], out: Path, provenance: dict | None = None,
                  dtype: torch.dtype | None = None) -> Path:
    """Materialize `recipe` and save it, with tokenizer, generation config, model card and recipe, under `out`;
    in `dtype` (default: the sources' own), as a run with that `dtype` merged it."""
    out = Path(out)
    pool = SourcePool(base, sources, stream=None, dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=pool.dtype)
    with torch.no_grad():
        Merger(pool).materialize(recipe, model)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    (out / "evomerge_recipe.json").write_text(recipe.model_dump_json(indent=2))
    (out / "README.md").write_text(_model_card(recipe, Path(base), [Path(s) for s in sources], provenance or {}))
    mk = mergekit_config(recipe, Path(base), [Path(s) for s in sources], pool.dtype)
    if mk is not None:
        (out / "mergekit_config.yml").write_text(yaml.safe_dump(mk, sort_keys=False))
    return out


def export_from_run(run_dir: Path, out: Path, rank: int = 1, candidate: str | None = None) -> tuple[Path, str]:
    """Export a leaderboard entry of a run: the candidate of rank `rank` (by search objective, as `evomerge
    leaderboard` ranks them), or the one with id `candidate`; its scores go into the model card."""
    from evomerge.reporting.leaderboard import read_board
    from evomerge.store import RunDir

    board = read_board(run_dir)
    store = RunDir.open(run_dir).store()
    try:
        meta = store.get_meta("sources")
    finally:
        store.close()
    known = _known_winner(run_dir)
    if meta is not None and known is not None and (candidate == known["label"] or (candidate is None and rank == 1)):
        src = json.loads(meta)
        provenance = {"experiment": board.name, "run directory": str(Path(run_dir).resolve()),
                      "candidate": f"{known['label']} (known before the search: the best on the search split, above "
                                   "every search candidate)"}
        recipe = parse_recipe(json.dumps(known["recipe"]))
        if isinstance(recipe, FlowRecipe):  # a data-flow search whose start, model A, stayed the best
            return export_flow_recipe(recipe, [Path(m) for m in src["models"]], out, provenance), known["label"]
        path = export_recipe(recipe, Path(src["base"]), [Path(m) for m in src["models"]], out, provenance,
                             _run_dtype(src))
        return path, known["label"]
    ranked = [c for c in board.candidates if c.rank is not None]
    if meta is None or not ranked:
        raise ConfigError(f"{run_dir}: the run has no successful search evaluation to export yet")
    if candidate is not None:
        c = board.by_id(candidate)
        if c is None or c.rank is None:
            raise ConfigError(f"--candidate: no successful candidate {candidate!r} in {run_dir}")
    else:
        if not 1 <= rank <= len(ranked):
            raise ConfigError(f"--rank: expected 1..{len(ranked)}, got {rank}")
        c = ranked[rank - 1]
    src = json.loads(meta)
    split = board.settings
    provenance = {
        "experiment": board.name, "run directory": str(Path(run_dir).resolve()),
        "candidate": f"{c.id} (rank {c.rank} of {len(ranked)} by search score; generation {c.generation})",
        "search score": f"{c.objective:.4f} on the {split.search_split!r} split, per task "
                        + ", ".join(f"{t} {v:.4f}" for t, v in c.search.items()),
    }
    if c.heldout is not None:
        provenance["held-out score"] = (f"{c.heldout:.4f} on the {split.heldout_split!r} split, per task "
                                        + ", ".join(f"{t} {v:.4f}" for t, v in c.heldout_per_task.items()))
    if c.parents:
        provenance["parents"] = ", ".join(c.parents)
    try:
        recipe = parse_recipe(json.dumps(c.recipe))
    except ValidationError as e:  # a store edited by hand: one line, as for its other fields
        raise ConfigError(format_validation_error(e, f"{run_dir}: the stored recipe of {c.id}")) from None
    if isinstance(recipe, FlowRecipe):
        return export_flow_recipe(recipe, [Path(m) for m in src["models"]], out, provenance), c.id
    path = export_recipe(recipe, Path(src["base"]), [Path(m) for m in src["models"]], out, provenance,
                         _run_dtype(src))
    return path, c.id


def _run_dtype(src: dict) -> torch.dtype | None:
    """The experiment's `dtype` as the run recorded it with its sources (None: the sources' own)."""
    return None if src.get("dtype", "auto") == "auto" else getattr(torch, src["dtype"])


def _known_winner(run_dir: Path) -> dict | None:
    """{"label", "recipe"} of the final table's evolved row when a known candidate (a source or baseline scored
    before the search) won it, from results.json; None otherwise or before the run finished."""
    from evomerge.run.lifecycle import read_results

    data = read_results(Path(run_dir))
    if data is None:
        return None
    row = data["rows"][0]
    if not row["label"].startswith("evolved (= "):
        return None
    return {"label": data.get("best_candidate"), "recipe": row["recipe"]}


def export_flow_recipe(recipe: FlowRecipe, models: list[Path], out: Path, provenance: dict | None = None) -> Path:
    """A data-flow result as a standard checkpoint (scales folded into the output projections, see
    evomerge.merge.flow), checked against the search-time model's logits, with its card, recipe and — when every scale
    is 1 — a mergekit passthrough config."""
    from evomerge.merge.flow import FlowModels, export_flow, passthrough_config

    out = Path(out)
    flow = FlowModels(models)
    saved = export_flow(flow, recipe, out)
    err = _relative_logit_error(flow.build(recipe), saved, flow.tokenizer)
    if err > 1e-4:
        raise MergeError(f"export: the saved model's logits differ from the search-time model's by {err:.2e} "
                         "(relative); not exported faithfully")
    (out / "evomerge_recipe.json").write_text(recipe.model_dump_json(indent=2))
    card = {**(provenance or {}), "export check": f"logits match the search-time model to {err:.1e} (relative)"}
    (out / "README.md").write_text(_flow_card(recipe, models, card))
    mk = passthrough_config(recipe, models)
    if mk is not None:
        (out / "mergekit_config.yml").write_text(yaml.safe_dump(mk, sort_keys=False))
    return out


@torch.no_grad()
def _relative_logit_error(a: torch.nn.Module, b: torch.nn.Module, tokenizer) -> float:
    """Relative L2 error between two models' logits on a fixed probe text."""
    probe = "The quick brown fox jumps over the lazy dog. 12+34=46 " * 2
    ids = torch.tensor([tokenizer(probe)["input_ids"][: a.config.max_position_embeddings]])
    la, lb = a(input_ids=ids).logits.double(), b(input_ids=ids).logits.double()
    return float((la - lb).norm() / la.norm())


def _flow_card(recipe: FlowRecipe, models: list[Path], provenance: dict) -> str:
    front = {"library_name": "transformers", "tags": ["merge", "evomerge", "data-flow"]}
    steps = [f"| {t} | `{models[m].name}` | {i} | {s:.4g} |" for t, ((m, i), s) in
             enumerate(zip(recipe.path, recipe.scales, strict=True))]
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# Data-flow merge ({len(recipe.path)} layers)", "",
        f"Made by evomerge: layers of these models run in the order below, on the embeddings and head of "
        f"`{models[recipe.host]}`:", "", *[f"- `{m}`" for m in models], "",
        "The scales multiply the hidden state fed into each layer; this checkpoint folds them into the layers' "
        "output projections, so it is an ordinary model with duplicated layers.", "",
        "| step | model | layer | scale |", "|---|---|---|---|", *steps, "",
        "## How it was found", "", *[f"- {k}: {v}" for k, v in provenance.items()], "",
    ]
    return "\n".join(lines)


def export_recipe_file(recipe_file: Path, base: Path | None, sources: list[Path], out: Path) -> Path:
    """Export a recipe saved as JSON (for example an exported model's evomerge_recipe.json) onto given models."""
    if base is None or not sources:
        raise ConfigError("--base and at least one --source are needed to export a recipe file")
    for flag, path in [("--base", base), *(("--source", s) for s in sources)]:
        if not Path(path).is_dir():
            raise ConfigError(f"{flag}: model directory {str(path)!r} does not exist")
    try:
        recipe = Recipe.from_json(Path(recipe_file).read_text())
    except ValidationError as e:
        raise ConfigError(f"{recipe_file}: not a valid recipe: {e.errors()[0]['msg']} at "
                          f"{'.'.join(map(str, e.errors()[0]['loc']))}") from None
    for name, group in recipe.groups.items():
        if len(group.weights) != len(sources):
            raise ConfigError(f"{recipe_file}: group {name!r} has {len(group.weights)} weights for "
                              f"{len(sources)} --source models")
    return export_recipe(recipe, Path(base), [Path(s) for s in sources], out, {"recipe file": str(recipe_file)})
