"""A character-level tokenizer built with `tokenizers`, saved as a standard Hugging Face tokenizer — in the special-
token conventions of the model families that ship in transformers, so that the tests see each of them.

Every convention has the same vocabulary (ids 0–3 are `<pad> <s> </s> <unk>`, then one id per character); they
differ in which of these play BOS, EOS and pad, and in whether encoding a text puts BOS in front:

- `zoo` (the zoo's own): BOS added, EOS, pad.
- `llama3`: BOS added, EOS, no pad token (Llama 3).
- `qwen2`: no BOS token, EOS, pad = an EOS-like token of its own (`<pad>` plays `<|endoftext|>`), a ChatML-like chat
  template (Qwen2, Qwen3).
- `gpt2`: BOS = EOS = one token (`</s>` plays `<|endoftext|>`), not added, no pad token (GPT-2).
- `gemma`: BOS added, EOS, pad, left padding (Gemma).
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, processors
from transformers import PreTrainedTokenizerFast

from evomerge.zoo.tasks import ALPHABET

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]

# role -> token (None: the tokenizer has no such token); `add_bos`: encoding a text starts with BOS
CONVENTIONS: dict[str, dict] = {
    "zoo": {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "add_bos": True, "side": "right"},
    "llama3": {"bos": "<s>", "eos": "</s>", "pad": None, "add_bos": True, "side": "right"},
    "qwen2": {"bos": None, "eos": "</s>", "pad": "<pad>", "add_bos": False, "side": "right",
              # the user turn between markers, then the assistant's opening marker (ChatML's shape, in our vocabulary)
              "chat_template": "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
                               "{% if add_generation_prompt %}<s>{% endif %}"},
    "gpt2": {"bos": "</s>", "eos": "</s>", "pad": None, "add_bos": False, "side": "right"},
    "gemma": {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "add_bos": True, "side": "left"},
}


def build_char_tokenizer(convention: str = "zoo", padding_side: str | None = None) -> PreTrainedTokenizerFast:
    c = CONVENTIONS[convention]
    vocab = {tok: i for i, tok in enumerate(SPECIALS + ALPHABET)}
    # BPE without merges splits text into single characters; Fuse joins them back without spaces.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    core.add_special_tokens(SPECIALS)
    if c["add_bos"]:  # like Llama's: encoding with special tokens starts with <s> (what lm-eval and pipelines rely on)
        core.post_processor = processors.TemplateProcessing(single=f"{c['bos']} $A",
                                                            special_tokens=[(c["bos"], vocab[c["bos"]])])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        **{f"{role}_token": c[role] for role in ("bos", "eos", "pad") if c[role] is not None},
        unk_token="<unk>",
        padding_side=padding_side or c["side"],
    )
    if "chat_template" in c:
        tok.chat_template = c["chat_template"]
    return tok
