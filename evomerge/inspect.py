"""How a model's tensors are grouped for a search (`evomerge inspect SOURCE`, and `evomerge validate`): every stored
tensor's group at a granularity, and the tensors that are tied to another (stored once, under the other's name),
which move with the group of the tensor they are tied to."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from evomerge.errors import SourceError
from evomerge.sources import MappedCheckpoint, block_index, group_names, layer_group


def tied_tensors(path: Path, stored: set[str]) -> dict[str, str]:
    """{name the model uses but the checkpoint does not store: the stored name it is tied to}, found by building the
    architecture on the meta device (no memory) and matching parameters that are one object."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as e:  # noqa: BLE001 — an architecture transformers does not know: no tie is reported
        raise SourceError(f"{path}: transformers cannot build this architecture ({type(e).__name__}: {e})") from None
    first: dict[int, str] = {}
    tied = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first and name not in stored:
            tied[name] = first[id(p)]
        elif id(p) in first and first[id(p)] not in stored:
            tied[first[id(p)]] = name
        else:
            first.setdefault(id(p), name)
    return {n: s for n, s in tied.items() if s in stored}


def grouping(path: Path, granularity: str | int = "layer") -> dict:
    """{"groups": {group: [stored tensor names]}, "tied": {tied name: stored name}, "params": {group: count},
    "notes": [...]} for the model directory `path`."""
    ck = MappedCheckpoint(Path(path))
    names = [n for n, m in ck.meta.items() if m.is_floating_point()]
    n_blocks = 1 + max((block_index(n) or 0) for n in names)
    groups: dict[str, list[str]] = defaultdict(list)
    params: dict[str, int] = defaultdict(int)
    for n in sorted(names):
        g = layer_group(n, granularity, n_blocks)
        groups[g].append(n)
        count = 1
        for d in ck.meta[n].shape:
            count *= d
        params[g] += count
    tied = tied_tensors(Path(path), set(names))
    notes = []
    for name, target in sorted(tied.items()):
        g = layer_group(target, granularity, n_blocks)
        notes.append(f"{name} is tied to {target} (stored once): it moves with the {g!r} group, not with the group "
                     f"its name suggests")
        if granularity not in ("model", "tensor") and layer_group(name, granularity, n_blocks) == "head" and g != "head":
            notes.append("so the 'head' genes move only " + (", ".join(groups.get("head", [])) or "nothing"))
    order = group_names(granularity, n_blocks) if granularity != "tensor" else sorted(groups)
    return {"groups": {g: groups[g] for g in order if g in groups}, "params": dict(params), "tied": tied,
            "notes": notes, "blocks": n_blocks,
            "architecture": json.loads((Path(path) / "config.json").read_text()).get("architectures", ["?"])[0]
            if (Path(path) / "config.json").is_file() else "?"}


def render_grouping(info: dict, path: Path) -> list[str]:
    """The grouping as lines of text: one per group (tensor count, parameters, names), then the notes."""
    lines = [f"{path} ({info['architecture']}, {info['blocks']} blocks): how its tensors are grouped"]
    for g, names in info["groups"].items():
        shown = names if len(names) <= 4 or block_index(names[0]) is None else [*names[:3], "…"]
        tied = [t for t, s in info["tied"].items() if s in names]
        lines.append(f"  {g:12s} {len(names):3d} tensors {info['params'][g]:>12,d} parameters: " + ", ".join(shown)
                     + (f" (+ tied: {', '.join(tied)})" if tied else ""))
    lines += [f"  note: {n}" for n in info["notes"]]
    return lines
