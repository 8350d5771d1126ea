"""Tiny models of the architectures transformers ships, for the zoo builder: one function per family that makes
its config from the zoo's sizes and the tokenizer, and the tokenizer convention its real checkpoints use.

What each family brings that the others do not (why it is in the matrix):

- `llama`: the zoo's own (untied, separate q/k/v and gate/up, RMSNorm).
- `mistral`: sliding-window attention, grouped-query attention.
- `qwen2`: q/k/v projections with bias, no BOS token.
- `qwen3`: per-head q/k RMSNorms, tied embeddings, explicit head_dim.
- `gemma2`: tied embeddings, RMSNorm with a +1 offset (a zero weight is the identity), soft-capped logits, scaled
  embeddings, four norms per block.
- `gpt2`: tied embeddings, learned positions (`wpe`), Conv1D (transposed) weights, LayerNorm with bias, fused c_attn.
  Dropout off, as the other families' configs have it: at these sizes GPT-2's default 0.1 kept the models near
  chance in the time the others take to learn the tasks. Its learned positions make it learn addition first and
  the letter tasks (cipher, reverse) last — the reverse of the rotary families — so its base is pretrained on a
  mixture that favours the letters (`Family.mixture`); on the zoo's mixture the base stopped knowing addition alone.
- `phi3`: fused `qkv_proj` and `gate_up_proj`.
- `olmo2`: norms after attention and MLP (post-norm: no input norms), q/k RMSNorms over the whole projection. Its
  base learns the cipher first and addition last; on the zoo's mixture it stopped at addition 0.09, reversal 0.13,
  so its mixture gives reversal more weight too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import transformers


@dataclass(frozen=True)
class Family:
    convention: str  # the tokenizer convention (evomerge.zoo.tokenizer.CONVENTIONS)
    config: Callable  # (spec, tokenizer) -> a transformers config
    model: str  # the transformers class name
    # the base's pretraining mixture over add, cipher and reverse where the zoo's (4, 1, 1) leaves it unbalanced:
    # chosen by measurement (benchmarks/README.md, "Model families"), so that the base knows some of every skill
    mixture: tuple[float, ...] | None = None


def _ids(tok) -> dict:
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}


def _llama(spec, tok):
    return transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        max_position_embeddings=64, tie_word_embeddings=False, **_ids(tok))


def _mistral(spec, tok):
    return transformers.MistralConfig(
        vocab_size=len(tok), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=max(1, spec.heads // 2),
        max_position_embeddings=64, sliding_window=16, tie_word_embeddings=False, **_ids(tok))


def _qwen2(spec, tok):
    return transformers.Qwen2Config(
        vocab_size=len(tok), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=max(1, spec.heads // 2),
        max_position_embeddings=64, tie_word_embeddings=False, **_ids(tok))


def _qwen3(spec, tok):
    return transformers.Qwen3Config(
        vocab_size=len(tok), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=max(1, spec.heads // 2),
        head_dim=spec.hidden // spec.heads, max_position_embeddings=64, tie_word_embeddings=True, **_ids(tok))


def _gemma2(spec, tok):
    return transformers.Gemma2Config(
        vocab_size=len(tok), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=max(1, spec.heads // 2),
        head_dim=spec.hidden // spec.heads, query_pre_attn_scalar=spec.hidden // spec.heads,
        max_position_embeddings=64, sliding_window=16, tie_word_embeddings=True, **_ids(tok))


def _gpt2(spec, tok):
    return transformers.GPT2Config(
        vocab_size=len(tok), n_embd=spec.hidden, n_inner=spec.intermediate, n_layer=spec.layers, n_head=spec.heads,
        n_positions=64, tie_word_embeddings=True, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **_ids(tok))


def _phi3(spec, tok):
    return transformers.Phi3Config(
        vocab_size=len(tok), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        max_position_embeddings=64, original_max_position_embeddings=64, tie_word_embeddings=False, **_ids(tok))


def _olmo2(spec, tok):
    return transformers.Olmo2Config(
        vocab_size=len(tok), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        max_position_embeddings=64, tie_word_embeddings=False, **_ids(tok))


FAMILIES: dict[str, Family] = {
    "llama": Family("zoo", _llama, "LlamaForCausalLM"),
    "mistral": Family("llama3", _mistral, "MistralForCausalLM"),
    "qwen2": Family("qwen2", _qwen2, "Qwen2ForCausalLM"),
    "qwen3": Family("qwen2", _qwen3, "Qwen3ForCausalLM"),
    "gemma2": Family("gemma", _gemma2, "Gemma2ForCausalLM"),
    "gpt2": Family("gpt2", _gpt2, "GPT2LMHeadModel", mixture=(1.5, 1.0, 1.0)),
    "phi3": Family("llama3", _phi3, "Phi3ForCausalLM"),
    "olmo2": Family("gpt2", _olmo2, "Olmo2ForCausalLM", mixture=(4.0, 1.0, 2.0)),
}


def make_model(family: str, spec, tok):
    """A freshly initialized model of `family` at the spec's sizes (the global torch seed decides its weights)."""
    f = FAMILIES[family]
    return getattr(transformers, f.model)(f.config(spec, tok))
