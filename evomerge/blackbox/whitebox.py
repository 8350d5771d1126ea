"""White-box baselines over the same adapters: task arithmetic and TIES of the full LoRA updates, computed locally.

These read the adapter weights, so they are what a user could do if the provider handed over the repository —
a comparison for the black-box search, never part of it. λ is tuned on the same validation examples the search
sends to the service.
"""

from __future__ import annotations

from pathlib import Path

from evomerge.blackbox.lora_merge import (
    LoraRepository,
    ModelPool,
    encode,
    score_examples,
    task_arithmetic_deltas,
    ties_deltas,
)


def whitebox_results(base: Path, repository: Path, validation: list[dict], heldout: dict[str, list[dict]],
                     lams: list[float], ties_density: float) -> list[dict]:
    """[{label, lam, validation_loss, heldout: {task: accuracy}}] for task arithmetic and TIES, best λ each."""
    repo = LoraRepository(repository)
    pool = ModelPool(base, list(repo.modules))
    full = repo.full_deltas()
    val = encode(pool.tokenizer, validation)
    held = {t: encode(pool.tokenizer, rows) for t, rows in heldout.items()}
    methods = {"task_arithmetic": lambda lam: task_arithmetic_deltas(full, lam),
               f"ties(d={ties_density})": lambda lam: ties_deltas(full, ties_density, lam)}
    rows = []
    for label, make in methods.items():
        tried = []
        for lam in lams:
            with pool.merged(make(lam)) as model:
                try:
                    tried.append((float(score_examples(model, val)[0].mean()), lam))
                except FloatingPointError:
                    continue
        loss, lam = min(tried)
        with pool.merged(make(lam)) as model:
            acc = {t: float(score_examples(model, enc)[1].float().mean()) for t, enc in held.items()}
        rows.append({"label": f"white-box {label}", "lam": lam, "validation_loss": loss, "heldout": acc,
                     "queries": 0, "tuning": [{"lam": l_, "loss": v} for v, l_ in tried]})
    return rows
