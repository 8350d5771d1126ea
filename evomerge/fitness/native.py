"""Native exact-match scorer for prompt → answer tasks.

Greedy decoding produces the answer exactly iff, at every answer position, the argmax of the next-token
distribution given the *correct* prefix is the correct token, and after the answer it is EOS. So exact match
under greedy generation can be computed in one teacher-forced forward pass, which is ~100× cheaper than
`generate()` on short answers. `mode="generate"` runs real batched greedy generation; the two agree (tested).

Tokenizers are taken as transformers defines them: a prompt starts with whatever special tokens the tokenizer
itself puts before a text (BOS for Llama- and Gemma-style tokenizers, nothing for Qwen2- and GPT-2-style ones); an
answer ends with EOS when the tokenizer has one (without, only the answer's tokens are checked); padding uses the pad
token, else EOS, and is masked out, so the tokenizer's padding side changes nothing. With `chat=True` the prompt is
the user turn of the tokenizer's chat template, rendered with the generation prompt (as lm-eval's
`apply_chat_template`); the template's own text carries its special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evomerge.errors import ConfigError, shown


@dataclass(frozen=True)
class EncodedBatch:
    input_ids: torch.Tensor  # [B, L] right-padded: [prefix] prompt answer [eos]
    attention_mask: torch.Tensor  # [B, L]
    target_mask: torch.Tensor  # [B, L-1] True where position p must predict input_ids[p + 1]

    def rows(self, idx: list[int] | None) -> EncodedBatch:
        """These rows only (all of them for None)."""
        if idx is None:
            return self
        t = torch.as_tensor(idx, dtype=torch.long, device=self.input_ids.device)
        return EncodedBatch(self.input_ids[t], self.attention_mask[t], self.target_mask[t])


def special_prefix(tokenizer, sample: str = "0") -> list[int]:
    """The token ids the tokenizer puts before a text when it adds its special tokens (e.g. [BOS], or [])."""
    full = tokenizer.encode(sample, add_special_tokens=True)
    plain = tokenizer.encode(sample, add_special_tokens=False)
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i]
    return []


def pad_id(tokenizer) -> int:
    """The id that fills padded positions (masked out, so any valid id does): pad, else EOS, else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


class PromptEncoder:
    """A prompt as token ids: the tokenizer's special prefix and the prompt, or the prompt's chat turn."""

    def __init__(self, tokenizer, chat: bool = False):
        self.tokenizer, self.chat = tokenizer, chat
        if chat and not getattr(tokenizer, "chat_template", None):
            raise ConfigError("fitness.apply_chat_template: the base model's tokenizer has no chat template "
                              "(tokenizer_config.json or chat_template.jinja); set it to false")
        self.prefix = [] if chat else special_prefix(tokenizer)

    def __call__(self, prompt: str) -> list[int]:
        if self.chat:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
            return self.tokenizer.encode(text, add_special_tokens=False)
        return [*self.prefix, *self.tokenizer.encode(prompt, add_special_tokens=False)]


def encode_teacher_forced(tokenizer, examples: list[dict], device: str | torch.device = "cpu",
                          chat: bool = False) -> EncodedBatch:
    """Encode examples once (prompt answer EOS); the result is reused for every candidate model."""
    return encode_pairs(tokenizer, [(ex["prompt"], ex["answer"]) for ex in examples], eos=True, device=device,
                        chat=chat)


def encode_choices(tokenizer, examples: list[dict], device: str | torch.device = "cpu",
                   chat: bool = False) -> EncodedBatch:
    """Every (prompt, choice) pair of multiple-choice examples, flattened in order (prompt choice)."""
    return encode_pairs(tokenizer, [(ex["prompt"], c) for ex in examples for c in ex["choices"]], eos=False,
                        device=device, chat=chat)


def encode_pairs(tokenizer, pairs: list[tuple[str, str]], eos: bool, device: str | torch.device = "cpu",
                 chat: bool = False) -> EncodedBatch:
    """Right-padded `prompt continuation [EOS]` rows; the target mask covers the continuation (and EOS)."""
    prompt = PromptEncoder(tokenizer, chat)
    end = [tokenizer.eos_token_id] if eos and tokenizer.eos_token_id is not None else []
    rows, starts = [], []
    for context, continuation in pairs:
        p = prompt(context)
        a = tokenizer.encode(continuation, add_special_tokens=False)
        if not p:
            raise ConfigError(f"prompt {context!r} encodes to no tokens (and the tokenizer adds no BOS); a "
                              "continuation needs a token to follow")
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in a:  # no model is trained to answer it
            raise ConfigError(f"answer {shown(continuation)} of prompt {shown(context)} holds characters the "
                              f"tokenizer does not know (they encode to {tokenizer.unk_token}): no model can score "
                              "on it; expected answers in the tokenizer's vocabulary")
        rows.append([*p, *a, *end])
        starts.append(len(p))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id(tokenizer), dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    tmask = torch.zeros((len(rows), width - 1), dtype=torch.bool)
    for i, (r, s) in enumerate(zip(rows, starts, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
        # positions s-1 .. len(r)-2 predict the answer tokens and the final EOS
        tmask[i, s - 1 : len(r) - 1] = True
    return EncodedBatch(ids.to(device), attn.to(device), tmask.to(device))


@torch.no_grad()
def exact_match_teacher_forced(model, enc: EncodedBatch, batch_size: int = 128) -> torch.Tensor:
    """Per-example exact match (bool tensor) of greedy decoding, in one forward pass per batch."""
    out = []
    for i in range(0, enc.input_ids.shape[0], batch_size):
        ids = enc.input_ids[i : i + batch_size]
        logits = model(input_ids=ids, attention_mask=enc.attention_mask[i : i + batch_size]).logits
        if not torch.isfinite(logits).all():  # NaN/Inf weights show here; cheaper than scanning every weight
            raise FloatingPointError("the model produced non-finite logits")
        pred = logits[:, :-1].argmax(-1)
        ok = (pred == ids[:, 1:]) | ~enc.target_mask[i : i + batch_size]
        out.append(ok.all(-1))
    return torch.cat(out).cpu()


@torch.no_grad()
def choice_accuracy(model, enc: EncodedBatch, examples: list[dict], batch_size: int = 128) -> torch.Tensor:
    """Per-example correctness of multiple choice: the gold choice has the highest summed log-likelihood (the first
    of equal ones wins, as in lm-eval)."""
    scores = []
    for i in range(0, enc.input_ids.shape[0], batch_size):
        ids = enc.input_ids[i : i + batch_size]
        logits = model(input_ids=ids, attention_mask=enc.attention_mask[i : i + batch_size]).logits[:, :-1]
        if not torch.isfinite(logits).all():
            raise FloatingPointError("the model produced non-finite logits")
        logp = torch.log_softmax(logits.double(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        scores.append((logp * enc.target_mask[i : i + batch_size]).sum(-1))
    flat, out, at = torch.cat(scores).cpu(), [], 0
    for ex in examples:
        n = len(ex["choices"])
        out.append(int(torch.argmax(flat[at : at + n])) == ex["gold"])
        at += n
    return torch.tensor(out, dtype=torch.bool)


def answer_turns(tokenizer, answer: str) -> int:
    """How many EOS tokens end `answer` when generated: one, and one more for each EOS inside it (an answer worked in
    turns, each ended as an answer is)."""
    eos = tokenizer.eos_token_id
    return 1 + (0 if eos is None else tokenizer.encode(answer, add_special_tokens=False).count(eos))


def _decode_turns(tokenizer, toks: list[int]) -> str:
    """Generated tokens as text, the EOS between turns kept as the tokenizer writes it."""
    turns: list[list[int]] = [[]]
    for t in toks:
        if t == tokenizer.eos_token_id:
            turns.append([])
        else:
            turns[-1].append(t)
    return (tokenizer.eos_token or "").join(tokenizer.decode(t, skip_special_tokens=True) for t in turns)


@torch.no_grad()
def exact_match_generate(
    model, tokenizer, examples: list[dict], max_new_tokens: int = 16, batch_size: int = 128, check=None,
    chat: bool = False,
) -> torch.Tensor:
    """Per-example exact match of real batched greedy generation (left-padded prompts); with `check`, the
    generated text must also pass it. Without an EOS token, the first tokens generated must be the answer's."""
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, pad_id(tokenizer)
    prompt = PromptEncoder(tokenizer, chat)
    out = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        prompts = [prompt(ex["prompt"]) for ex in chunk]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for j, p in enumerate(prompts):
            ids[j, width - len(p) :] = torch.tensor(p)
            attn[j, width - len(p) :] = 1
        # an answer worked in turns ends each turn with EOS too: such a chunk generates its whole budget, and each
        # answer is read up to the EOS after its own turns
        turns = [answer_turns(tokenizer, ex["answer"]) for ex in chunk]
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=attn.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos if max(turns) == 1 else None,
            pad_token_id=pad,
        )[:, width:]
        for j, ex in enumerate(chunk):
            toks = gen[j].tolist()
            if eos is None:  # nothing marks an answer's end: its own length does
                toks = toks[: len(tokenizer.encode(ex["answer"], add_special_tokens=False))]
            else:
                ends = [k for k, t in enumerate(toks) if t == eos]
                if len(ends) < turns[j]:  # no EOS within the budget: the answer never finished
                    out.append(False)
                    continue
                toks = toks[: ends[turns[j] - 1]]
            text = _decode_turns(tokenizer, toks)
            out.append(text == ex["answer"] and (check is None or check(text)))
    return torch.tensor(out, dtype=torch.bool)
