"""Data-flow (DFS) models: building a candidate, and greedy generation with the KV cache, against the same layer
stack saved as an ordinary transformers model (the anchor: what a hand-built checkpoint of the path would cost).

Two Llama-shaped models (hidden 512, 8 layers each, random weights, fp32, CPU, one thread) and a 12-step path that
uses some layers twice, with non-unit scales. Figures are medians after a warm-up; the ratio compares figures taken
in the same run.

    python benchmarks/flow_speed.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import median_seconds  # benchmarks/common.py (scripts run from benchmarks/)
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from evomerge.merge.flow import FlowModels, export_flow
from evomerge.recipe import FlowRecipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=8, vocab_size=4096, max_position_embeddings=256, eos_token_id=None,
                      bos_token_id=1, pad_token_id=0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name in ("a", "b"):
            LlamaForCausalLM(cfg).save_pretrained(Path(tmp) / name)
            paths.append(Path(tmp) / name)
        _tokenizer_stub(paths)
        flow = FlowModels(paths)
        path = ((0, 0), (0, 1), (0, 2), (1, 2), (1, 3), (0, 3), (0, 4), (1, 4), (0, 4), (0, 5), (0, 6), (0, 7))
        recipe = FlowRecipe(path=path, scales=(1.0, *[1.1, 0.9] * 5, 1.2))
        export_flow(flow, recipe, Path(tmp) / "exported")
        anchor = AutoModelForCausalLM.from_pretrained(Path(tmp) / "exported").eval()
        model = flow.build(recipe)
        ids = torch.randint(3, cfg.vocab_size, (args.batch, 24))
        gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
        with torch.no_grad():
            build_s = median_seconds(lambda: flow.build(recipe), args.reps)
            flow_s = median_seconds(lambda: model.generate(ids, **gen), args.reps)
            anchor_s = median_seconds(lambda: anchor.generate(ids, **gen), args.reps)
            same = torch.equal(model.generate(ids, **gen), anchor.generate(ids, **gen))
    tokens = args.batch * args.new_tokens
    print(f"path of {len(path)} steps (3 layers used twice), batch {args.batch}, {args.new_tokens} new tokens")
    print(f"build a candidate model:         {build_s * 1e3:8.2f} ms")
    print(f"flow model generate:             {flow_s:8.3f} s  ({tokens / flow_s:7.1f} tokens/s)")
    print(f"exported checkpoint generate:    {anchor_s:8.3f} s  ({tokens / anchor_s:7.1f} tokens/s)")
    print(f"flow / exported time:            {flow_s / anchor_s:8.3f}")
    print(f"same greedy tokens:              {same}")


def _tokenizer_stub(paths: list[Path]) -> None:
    """FlowModels loads the host's tokenizer; random-weight models get a tiny character-level one."""
    from evomerge.zoo.tokenizer import build_char_tokenizer

    for p in paths:
        build_char_tokenizer().save_pretrained(p)


if __name__ == "__main__":
    main()
