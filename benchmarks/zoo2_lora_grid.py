"""Why black-box merging has nothing to gain on zoo v2's LoRA repository: held-out word_add accuracy (and loss) of
the merge service's merge (α = 1) at a grid of scales β over the language adapter lora-00, the second language
adapter lora-01 and the math adapter lora-02 (the others at 0). Builds the zoo and the repository on first use.

    EVOMERGE_HOME=/tmp/zoo2-methods python benchmarks/zoo2_lora_grid.py      # ~1 CPU-minute once built
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evomerge.blackbox.lora_merge import LoraRepository, ModelPool, blackbox_deltas, encode, score_examples
from evomerge.zoo.lora import LORA_PROFILES, build_lora_repo

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    torch.set_num_threads(1)
    repo_dir = build_lora_repo(LORA_PROFILES["zoo2"])
    repo = LoraRepository(repo_dir)
    pool = ModelPool(Path(json.loads((repo_dir / "repo.json").read_text())["base"]), list(repo.modules))
    rows = [json.loads(line) for line in open(REPO / "fitness" / "data" / "zoo2" / "word_add" / "heldout.jsonl")]
    enc = encode(pool.tokenizer, rows)
    n = len(repo)
    for lang2 in (0.0, 0.5):
        for math in (0.0, 0.25, 0.5, 0.75, 1.0):
            beta = [1.0, lang2, math] + [0.0] * (n - 3)
            with pool.merged(blackbox_deltas(repo, [1.0] * n, beta)) as model:
                loss, correct = score_examples(model, enc)
            print(json.dumps({"beta": beta, "word_add": round(float(correct.float().mean()), 3),
                              "loss": round(float(loss.mean()), 4)}), flush=True)


if __name__ == "__main__":
    main()
