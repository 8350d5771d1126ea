"""Data-flow-space models (DFS, Akiba et al.): which layers of which model run in which order.

A `FlowRecipe` names a path of (model, layer) pairs and, per step of the path, a positive scale on the hidden state
fed into that layer. `FlowModels` holds the loaded models once; `build(recipe)` returns a real transformers model of
the host's class whose decoder layers are the path's layers — shared with the loaded models, never copied — so
that forward passes, masks, rotary positions and `generate()` with a KV cache all work unchanged. Every step of the
path gets its own `layer_idx`, hence its own KV-cache entry: a layer that runs twice writes two entries.

`export_flow` writes an evolved path as an ordinary checkpoint: duplicated layers, and the scales folded into the
output projections. For pre-norm blocks, x ↦ block(s·x) = s·x + f(x) up to the norms' epsilon; dividing block t's
residual-writing projections (o_proj, down_proj) by P_t = s_1·…·s_t makes the checkpoint's stream y_t = x_t / P_t,
and the final norm removes P_T. The logits then match the search-time model up to the norms' epsilon.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.errors import MergeError
from evomerge.recipe import FlowRecipe

# Config fields the layers of every model of a flow must share (they run on the host's stream and rotary table).
_SHARED_FIELDS = ("model_type", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                  "rms_norm_eps", "rope_parameters")
# Per-layer config lists that must follow the path (Mistral/Qwen2-style sliding-window layouts).
_PER_LAYER_FIELDS = ("layer_types",)
# The projections that write into the residual stream; export folds the scales into them.
_RESIDUAL_WRITERS = ("self_attn.o_proj", "mlp.down_proj")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    try:
        return model.model.layers
    except AttributeError:
        raise MergeError(f"{type(model).__name__}: data-flow merging needs a decoder-only model with "
                         "model.model.layers (Llama, Mistral, Qwen2 families)") from None


class FlowStep(nn.Module):
    """One step of a path: a layer that shares its weights with the source model but owns its KV-cache slot, and
    the scale applied to the hidden state fed into it."""

    def __init__(self, layer: nn.Module, slot: int, scale: float):
        super().__init__()
        self.layer = _with_cache_slot(layer, slot)
        self.scale = float(scale)
        if hasattr(layer, "attention_type"):  # models with sliding-window layers pick the mask by it
            self.attention_type = layer.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        if self.scale != 1.0:  # a unit scale is skipped, so the identity path is bit-exact
            hidden_states = hidden_states * self.scale
        return self.layer(hidden_states, *args, **kwargs)


def _with_cache_slot(layer: nn.Module, slot: int) -> nn.Module:
    """A shallow copy of `layer` whose attention writes KV-cache entry `slot`; parameters stay shared."""
    out = copy.copy(layer)
    out._modules = dict(layer._modules)  # own submodule table: replacing self_attn must not touch the source
    attn = copy.copy(layer.self_attn)
    attn.layer_idx = slot
    out._modules["self_attn"] = attn
    if hasattr(out, "layer_idx"):
        out.layer_idx = slot
    return out


def path_config(host_config, n_layers: int, per_layer: dict[str, list]):
    cfg = copy.deepcopy(host_config)
    cfg.num_hidden_layers = n_layers
    for field, values in per_layer.items():
        setattr(cfg, field, values)
    return cfg


def check_flow_models(paths: list[Path], configs: list, dtypes: list[torch.dtype | None]) -> None:
    """Models one data flow can run: the host's (the first's) family and size, and its dtype (None: not compared,
    the experiment casts every model to its own)."""
    for path, cfg, dtype in zip(paths[1:], configs[1:], dtypes[1:], strict=True):
        for field in _SHARED_FIELDS:
            a, b = getattr(configs[0], field, None), getattr(cfg, field, None)
            if a != b:
                raise MergeError(f"{path}: config.{field} is {b!r} but the host model {paths[0]} has "
                                 f"{a!r}; data-flow merging needs models of one family and size")
        if dtype != dtypes[0]:
            raise MergeError(f"{path}: dtype {dtype}, the host model has {dtypes[0]} (set the experiment's dtype: "
                             "float32, bfloat16 or float16, to cast every model to one)")


def preflight_flow(paths: list[Path], cast: bool) -> None:
    """What FlowModels checks when a worker loads the models, from config.json and the safetensors headers, so
    that a run refuses models that cannot share a flow before its directory exists."""
    from transformers import AutoConfig

    from evomerge.sources import checkpoint_dtype

    dtypes = [None if cast else checkpoint_dtype(p) for p in paths]
    check_flow_models(paths, [AutoConfig.from_pretrained(p) for p in paths], dtypes)


class FlowModels:
    """The models a data-flow search runs over, loaded once per worker (the first is the host: embeddings, final
    norm, head and tokenizer)."""

    def __init__(self, paths: list[Path], device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
        if len(paths) < 2:
            raise MergeError(f"a data flow needs at least two models, got {len(paths)}")
        self.paths = [Path(p) for p in paths]
        self.device = device
        self.models = [AutoModelForCausalLM.from_pretrained(p, dtype=dtype).to(device).eval() for p in self.paths]
        self.dtype = self.models[0].dtype
        self.tokenizer = AutoTokenizer.from_pretrained(self.paths[0])
        self._check_compatible()
        self.n_layers = [len(decoder_layers(m)) for m in self.models]

    def _check_compatible(self) -> None:
        check_flow_models(self.paths, [m.config for m in self.models], [m.dtype for m in self.models])


    def _per_layer(self, recipe: FlowRecipe) -> dict[str, list]:
        out = {}
        for field in _PER_LAYER_FIELDS:
            lists = [getattr(m.config, field, None) for m in self.models]
            if all(v is not None for v in lists):
                out[field] = [lists[m][i] for m, i in recipe.path]
        return out

    def check(self, recipe: FlowRecipe) -> None:
        for step, (m, i) in enumerate(recipe.path):
            if not (0 <= m < len(self.models) and 0 <= i < self.n_layers[m]):
                raise MergeError(f"path step {step}: ({m}, {i}) names no layer (models have {self.n_layers} layers)")
        if not 0 <= recipe.host < len(self.models):
            raise MergeError(f"host {recipe.host}: there are {len(self.models)} models")

    def build(self, recipe: FlowRecipe) -> nn.Module:
        """A model of the host's class running `recipe`'s path; costs no weight copy."""
        self.check(recipe)
        host = self.models[recipe.host]
        cfg = path_config(host.config, len(recipe.path), self._per_layer(recipe))
        with torch.device("meta"):
            model = type(host)(cfg)
        model.model.embed_tokens = host.model.embed_tokens
        model.model.norm = host.model.norm
        model.model.rotary_emb = host.model.rotary_emb
        model.lm_head = host.lm_head
        model.model.layers = nn.ModuleList(
            FlowStep(decoder_layers(self.models[m])[i], slot, s)
            for slot, ((m, i), s) in enumerate(zip(recipe.path, recipe.scales, strict=True)))
        model.generation_config = copy.deepcopy(host.generation_config)
        left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left:  # an architecture with more top-level state than embeddings, norm, rotary table and head
            raise MergeError(f"{type(host).__name__}: data-flow models cannot take {left[:3]} from the host yet")
        return model.eval()


def export_flow(models: FlowModels, recipe: FlowRecipe, out: Path) -> nn.Module:
    """Save `recipe` as a standard checkpoint (no remote code): the path's layers duplicated in order, each
    block's residual-writing projections divided by the running product of the scales. Returns the saved model."""
    for s in recipe.scales:
        if not s > 0:
            raise MergeError(f"scale {s}: only positive scales fold into a standard checkpoint")
    host = models.models[recipe.host]
    layers = decoder_layers(host)
    if any(hasattr(layers[0], n) for n in ("post_feedforward_layernorm", "pre_feedforward_layernorm")):
        raise MergeError(f"{type(host).__name__}: blocks with post-norms do not let scales fold into projections")
    cfg = path_config(host.config, len(recipe.path), models._per_layer(recipe))
    cfg.architectures = [type(host).__name__]
    model = type(host)(cfg).to(dtype=models.dtype).eval()
    sd = {k: v for k, v in host.state_dict().items() if not k.startswith("model.layers.")}
    running = 1.0
    for t, ((m, i), s) in enumerate(zip(recipe.path, recipe.scales, strict=True)):
        running *= s
        for name, tensor in decoder_layers(models.models[m])[i].state_dict().items():
            value = tensor.clone()
            if name.rsplit(".", 1)[0] in _RESIDUAL_WRITERS and running != 1.0:
                value = (value.double() / running).to(value.dtype)
            sd[f"model.layers.{t}.{name}"] = value
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # a tied head has no state-dict entry of its own; anything else missing is a bug
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise MergeError(f"export: state dict mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})")
    out = Path(out)
    model.save_pretrained(out)
    models.tokenizer.save_pretrained(out)
    host.generation_config.save_pretrained(out)
    return model


def passthrough_config(recipe: FlowRecipe, paths: list[Path]) -> dict | None:
    """A mergekit passthrough config stacking the path's layers, or None when a scale is not 1 (mergekit's
    passthrough cannot scale a layer's input) or the host is not the first model."""
    if any(s != 1.0 for s in recipe.scales) or recipe.host != 0:
        return None
    slices: list[dict] = []
    for m, i in recipe.path:  # runs of consecutive layers of one model become one slice
        last = slices[-1]["sources"][0] if slices else None
        if last is not None and last["model"] == str(paths[m]) and last["layer_range"][1] == i:
            last["layer_range"][1] = i + 1
        else:
            slices.append({"sources": [{"model": str(paths[m]), "layer_range": [i, i + 1]}]})
    return {"merge_method": "passthrough", "slices": slices, "dtype": "float32"}
