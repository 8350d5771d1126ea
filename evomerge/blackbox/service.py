"""The merge service: a provider hosts a base model and a LoRA repository behind an HTTP API (Chen et al.,
"Black-box Model Merging for Language-Model-as-a-Service with Massive Model Repositories"; see the README's
black-box section).

Clients send per-adapter sparsity α and scale β plus validation examples (or the name of a dataset the server
knows) and get back scalars — the mean validation loss, optionally per-example losses and accuracy — or greedy
completions (OpenAI completion shape). They never receive a weight. Every endpoint but /healthz needs a bearer
token; each token has a query budget. Versioned under /v1; FastAPI serves the OpenAPI document at /openapi.json.

It serves only what it declares: the datasets and their splits are read once, at start-up, into a registry;
a request names a dataset and a split by id, and no value of a request ever reaches a file path. Request fields
are strictly typed (no "0.5" for 0.5, no true for 1). Budgets live in a SQLite file (`BudgetStore`) keyed by a
hash of each token, charged atomically, so a restart neither refills them nor forgets what was spent; a per-token
rate limit answers 429 with Retry-After.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from evomerge.errors import require_extra

require_extra("blackbox", "black-box merging")  # one clear line when the extra is missing

import torch  # noqa: E402
from fastapi import Depends, FastAPI, HTTPException, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

from evomerge.blackbox.lora_merge import LoraRepository, ModelPool, blackbox_deltas, encode, score_examples  # noqa: E402
from evomerge.errors import ConfigError  # noqa: E402
from evomerge.fitness.native import PromptEncoder, pad_id  # noqa: E402
from evomerge.fitness.tasks import load_split  # noqa: E402

API_VERSION = "v1"
TOKEN_ENV = "EVOMERGE_SERVICE_TOKEN"


@dataclass
class Limits:
    max_body_bytes: int = 1 << 20
    max_examples: int = 1024
    max_chars: int = 48  # per prompt or answer: the zoo's models see at most 64 positions
    max_new_tokens: int = 32
    beta_bound: float = 5.0  # |β| ≤ this: larger scales only make a model diverge
    rate_per_s: float = 50.0  # queries per second and token, sustained
    burst: int = 100  # queries a token may send at once before the rate applies


def token_id(token: str) -> str:
    """What the budget store keeps of a token: its SHA-256, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


class BudgetStore:
    """Each token's budget and spent queries in SQLite: durable across restarts, charged in one atomic UPDATE (so
    concurrent requests, threads or processes, never overspend). A token's budget comes from the tokens file at
    every start; what it has spent stays."""

    def __init__(self, path: Path, budgets: dict[str, int]):
        self.path = Path(path)
        self._con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=FULL")
            self._con.execute("CREATE TABLE IF NOT EXISTS budgets (token_sha256 TEXT PRIMARY KEY, "
                              "budget INTEGER NOT NULL, spent INTEGER NOT NULL DEFAULT 0)")
            for tok, budget in budgets.items():
                self._con.execute("INSERT INTO budgets (token_sha256, budget) VALUES (?, ?) ON CONFLICT "
                                  "(token_sha256) DO UPDATE SET budget = excluded.budget", (token_id(tok), budget))

    def charge(self, token: str) -> int | None:
        """One query off `token`'s budget; the queries left after it, or None when none was left."""
        with self._lock:
            row = self._con.execute("UPDATE budgets SET spent = spent + 1 WHERE token_sha256 = ? AND spent < budget "
                                    "RETURNING budget - spent", (token_id(token),)).fetchone()
        return None if row is None else int(row[0])

    def left(self, token: str) -> int:
        with self._lock:
            row = self._con.execute("SELECT budget - spent FROM budgets WHERE token_sha256 = ?",
                                    (token_id(token),)).fetchone()
        return max(0, int(row[0])) if row else 0

    def spent(self, token: str) -> int:
        with self._lock:
            row = self._con.execute("SELECT spent FROM budgets WHERE token_sha256 = ?", (token_id(token),)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._con.close()


@dataclass
class Budgets:
    """The tokens (matched in constant time, never logged or returned), their durable budgets and rate limits."""

    tokens: list[str]
    store: BudgetStore
    limits: Limits
    lock: threading.Lock = field(default_factory=threading.Lock)
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # token -> (allowance, last time)

    def match(self, token: str) -> str | None:
        found = None
        for known in self.tokens:  # constant-time compare per candidate token, all of them
            if hmac.compare_digest(known.encode(), token.encode()):
                found = known
        return found

    def charge(self, token: str) -> int:
        self._rate(token)
        left = self.store.charge(token)
        if left is None:
            raise HTTPException(429, detail={"code": "budget_exhausted",
                                             "message": "this token's query budget is used up"})
        return left

    def _rate(self, token: str) -> None:
        """A token bucket per token: `burst` queries at once, then `rate_per_s`."""
        lim, now = self.limits, time.monotonic()
        with self.lock:
            allowance, last = self._buckets.get(token, (float(lim.burst), now))
            allowance = min(float(lim.burst), allowance + (now - last) * lim.rate_per_s)
            if allowance < 1:
                self._buckets[token] = (allowance, now)
                wait = (1 - allowance) / lim.rate_per_s
                raise HTTPException(429, detail={"code": "rate_limited", "message": "too many queries; slow down"},
                                    headers={"Retry-After": str(max(1, round(wait + 0.5)))})
            self._buckets[token] = (allowance - 1, now)


def read_tokens(tokens_file: Path | None, budget: int) -> dict[str, int]:
    """Tokens from a file (lines `TOKEN [BUDGET]`, # comments) or else the EVOMERGE_SERVICE_TOKEN variable."""
    tokens: dict[str, int] = {}
    if tokens_file is not None:
        if not tokens_file.is_file():
            raise ConfigError(f"--tokens-file: {tokens_file} not found (expected lines 'TOKEN [BUDGET]')")
        for n, line in enumerate(tokens_file.read_text().splitlines(), 1):
            parts = line.split("#", 1)[0].split()
            if not parts:
                continue
            if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
                raise ConfigError(f"--tokens-file: {tokens_file} line {n}: expected 'TOKEN [BUDGET]' with an "
                                  "integer budget")
            tokens[parts[0]] = int(parts[1]) if len(parts) == 2 else budget
    elif os.environ.get(TOKEN_ENV):
        tokens[os.environ[TOKEN_ENV]] = budget
    if not tokens:
        raise ConfigError(f"no API token: set {TOKEN_ENV} or pass --tokens-file (the service refuses to run open)")
    return tokens


# -- request and response schemas -----------------------------------------------------------------------------------
class _Strict(BaseModel):
    # strict: a string is not a number and a boolean is not one either (lax pydantic takes "0.5" and true)
    model_config = ConfigDict(extra="forbid", strict=True)


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class Example(_Strict):
    prompt: str
    answer: str


class DatasetRef(_Strict):
    name: str = Field(description="a dataset the server declares (GET /v1/datasets)")
    split: str = Field("search", description="one of that dataset's splits (GET /v1/datasets)")
    limit: int | None = Field(None, ge=1)


class MergeSpec(_Strict):
    alpha: list[FiniteFloat] = Field(description="per-adapter sparsity in [0, 1], in the order of GET /v1/adapters")
    beta: list[FiniteFloat] = Field(description="per-adapter scale, |β| ≤ the server's bound")


class EvaluateRequest(MergeSpec):
    examples: list[Example] | None = None
    dataset: DatasetRef | None = None
    per_example: bool = False
    accuracy: bool = False


class EvaluateResponse(BaseModel):
    loss: float
    n: int
    accuracy: float | None = None
    per_example_loss: list[float] | None = None
    per_example_correct: list[bool] | None = None
    budget_left: int


class CompletionRequest(_Strict):
    model: str = "merge"
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(0.0, ge=0, le=0, description="greedy decoding only")
    merge: MergeSpec


class CompletionChoice(BaseModel):
    text: str
    index: int
    finish_reason: Literal["stop", "length"]


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: dict[str, int]


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[str]


def _bad(message: str, status: int = 422) -> HTTPException:
    return HTTPException(status, detail={"code": "invalid_request", "message": message})


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def load_datasets(dirs: dict[str, Path]) -> dict[str, dict[str, list[dict]]]:
    """The dataset registry, read once at start-up: {dataset id: {split id: rows}} from DIR/<split>.jsonl."""
    out = {}
    for name, d in dirs.items():
        if not _ID.fullmatch(name):
            raise ConfigError(f"--dataset: {name!r} is not a dataset id (letters, digits, '_', '.', '-')")
        files = sorted(p for p in Path(d).glob("*.jsonl") if p.is_file() and _ID.fullmatch(p.stem))
        if not files:
            raise ConfigError(f"--dataset {name}: {d} holds no <split>.jsonl file")
        out[name] = {p.stem: load_split(Path(d), p.stem, f"--dataset {name}") for p in files}
    return out


# -- the application ------------------------------------------------------------------------------------------------
class MergeService:
    def __init__(self, base_dir: Path, repo_dir: Path, datasets: dict[str, Path] | None = None,
                 replicas: int = 1, limits: Limits | None = None):
        self.repo = LoraRepository(repo_dir)
        self.pool = ModelPool(base_dir, list(self.repo.modules), replicas)
        self.datasets = load_datasets(datasets or {})  # fixed from here on: requests only pick from it
        self.limits = limits or Limits()
        self._encoded: dict[tuple, object] = {}
        self._lock = threading.Lock()
        self._vocab = set(self.pool.tokenizer.get_vocab())
        # its special tokens' text reads as one token each (an answer worked in turns holds EOS): longest first
        self._specials = sorted(self.pool.tokenizer.all_special_tokens, key=len, reverse=True)

    def _unreadable(self, text: str) -> list[str]:
        """The characters of `text` outside the model's vocabulary, once its special tokens are taken out."""
        for special in self._specials:
            text = text.replace(special, "")
        return sorted(set(text) - self._vocab)

    def check_merge(self, m: MergeSpec, where: str = "") -> None:
        n = len(self.repo)
        for name, vec in (("alpha", m.alpha), ("beta", m.beta)):
            if len(vec) != n:
                raise _bad(f"{where}{name}: expected {n} values (one per adapter of GET /v1/adapters), got {len(vec)}")
        bad = [i for i, a in enumerate(m.alpha) if not 0.0 <= a <= 1.0]
        if bad:
            raise _bad(f"{where}alpha[{bad[0]}]: {m.alpha[bad[0]]} is out of bounds (expected 0 ≤ α ≤ 1)")
        bound = self.limits.beta_bound
        bad = [i for i, b in enumerate(m.beta) if abs(b) > bound]
        if bad:
            raise _bad(f"{where}beta[{bad[0]}]: {m.beta[bad[0]]} is out of bounds (expected |β| ≤ {bound})")

    def examples(self, req: EvaluateRequest) -> list[dict]:
        if (req.examples is None) == (req.dataset is None):
            raise _bad("give either examples or dataset, not both or neither")
        if req.dataset is not None:
            ref = req.dataset
            rows = self.datasets.get(ref.name, {}).get(ref.split)
            if rows is None:  # one answer for any unknown id: nothing about what exists beyond the listing
                raise _bad("dataset: not a declared dataset and split; GET /v1/datasets lists them")
            rows = rows[: ref.limit] if ref.limit else rows
        else:
            rows = [e.model_dump() for e in req.examples]
        lim = self.limits
        if not rows:
            raise _bad("examples: expected at least one example")
        if len(rows) > lim.max_examples:
            raise _bad(f"examples: {len(rows)} examples; at most {lim.max_examples} per request", 413)
        for i, r in enumerate(rows):
            for key in ("prompt", "answer"):
                text = r[key]
                if not text or len(text) > lim.max_chars:
                    raise _bad(f"examples[{i}].{key}: expected 1 to {lim.max_chars} characters, got {len(text)}")
                unknown = self._unreadable(text)
                if unknown:
                    raise _bad(f"examples[{i}].{key}: characters {unknown} are not in the model's vocabulary")
        return rows

    def encoded(self, rows: list[dict]):
        """Tokenized examples, cached: a search sends the same validation examples with every query."""
        key = tuple((r["prompt"], r["answer"]) for r in rows)
        with self._lock:
            enc = self._encoded.get(key)
        if enc is None:
            enc = encode(self.pool.tokenizer, rows)
            with self._lock:
                if len(self._encoded) >= 64:
                    self._encoded.pop(next(iter(self._encoded)))  # oldest first
                self._encoded[key] = enc
        return enc

    def evaluate(self, req: EvaluateRequest, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        deltas = blackbox_deltas(self.repo, req.alpha, req.beta)
        enc = self.encoded(rows)
        with self.pool.merged(deltas) as model:
            return score_examples(model, enc)

    def prompts(self, req: CompletionRequest) -> list[str]:
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts or len(prompts) > self.limits.max_examples:
            raise _bad(f"prompt: expected 1 to {self.limits.max_examples} prompts")
        for i, p in enumerate(prompts):
            if not p or len(p) > self.limits.max_chars or self._unreadable(p):
                raise _bad(f"prompt[{i}]: expected 1 to {self.limits.max_chars} characters of the model's vocabulary")
        return prompts

    @torch.no_grad()
    def complete(self, req: CompletionRequest) -> list[tuple[str, str]]:
        tok = self.pool.tokenizer
        prompts = self.prompts(req)
        max_new = min(req.max_tokens, self.limits.max_new_tokens)
        out = []
        with self.pool.merged(blackbox_deltas(self.repo, req.merge.alpha, req.merge.beta)) as model:
            encode = PromptEncoder(tok)  # the tokenizer's own special prefix (BOS or none)
            for p in prompts:  # one at a time: no padding, so exactly what greedy decoding gives for this prompt
                ids = torch.tensor([encode(p)])
                gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                                     do_sample=False, eos_token_id=tok.eos_token_id,
                                     pad_token_id=pad_id(tok))[0, ids.shape[1]:].tolist()
                stop = tok.eos_token_id in gen
                text = tok.decode(gen[: gen.index(tok.eos_token_id)] if stop else gen, skip_special_tokens=True)
                out.append((text, "stop" if stop else "length"))
        return out


def create_app(service: MergeService, tokens: dict[str, int], budget_db: Path) -> FastAPI:
    """The HTTP application; `budget_db`: the SQLite file of budgets and spent queries (created if absent)."""
    app = FastAPI(title="evomerge merge service", version=API_VERSION,
                  description="Black-box LoRA merging: send per-adapter sparsity α and scale β, get scalars back.")
    budgets = Budgets(list(tokens), BudgetStore(budget_db, tokens), service.limits)
    bearer = HTTPBearer(auto_error=False)

    def token(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
        known = budgets.match(creds.credentials) if creds else None
        if known is None:
            raise HTTPException(401, detail={"code": "unauthorized", "message": "missing or invalid bearer token"},
                                headers={"WWW-Authenticate": "Bearer"})
        return known

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > service.limits.max_body_bytes):
            return JSONResponse({"detail": {"code": "payload_too_large", "message":
                                            f"request body over {service.limits.max_body_bytes} bytes"}}, 413)
        if size is None and request.method == "POST":
            return JSONResponse({"detail": {"code": "length_required",
                                            "message": "send a Content-Length header"}}, 411)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"][1:]) or "body"
            parts.append(f"{where}: {e['msg']}")
        return JSONResponse({"detail": {"code": "invalid_request", "message": "; ".join(parts)}}, 422)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get(f"/{API_VERSION}/adapters", response_model=AdapterList)
    def adapters(_: str = Depends(token)) -> AdapterList:
        """The adapter ids, in the order α and β refer to them."""
        return AdapterList(data=service.repo.ids)

    @app.get(f"/{API_VERSION}/datasets")
    def datasets(_: str = Depends(token)) -> dict:
        """The declared datasets and their splits: all a request may name."""
        return {"object": "list", "data": sorted(service.datasets),
                "splits": {n: sorted(s) for n, s in service.datasets.items()}}

    @app.get(f"/{API_VERSION}/budget")
    def budget(tok: str = Depends(token)) -> dict:
        return {"budget_left": budgets.store.left(tok), "spent": budgets.store.spent(tok)}

    @app.post(f"/{API_VERSION}/merges/evaluate", response_model=EvaluateResponse,
              response_model_exclude_none=True)
    def evaluate(req: EvaluateRequest, tok: str = Depends(token)) -> EvaluateResponse:
        """Merge the adapters with (α, β), score the examples: mean loss over the answer tokens (+ accuracy)."""
        service.check_merge(req)
        rows = service.examples(req)  # validated before the query is charged
        left = budgets.charge(tok)
        try:
            losses, correct = service.evaluate(req, rows)
        except FloatingPointError as e:
            raise HTTPException(422, detail={"code": "diverged", "message": str(e)}) from None
        return EvaluateResponse(
            loss=float(losses.mean()), n=len(losses), budget_left=left,
            accuracy=float(correct.float().mean()) if req.accuracy else None,
            per_example_loss=[float(x) for x in losses] if req.per_example else None,
            per_example_correct=[bool(x) for x in correct] if req.per_example and req.accuracy else None)

    @app.post(f"/{API_VERSION}/completions", response_model=CompletionResponse)
    def completions(req: CompletionRequest, tok: str = Depends(token)) -> CompletionResponse:
        """OpenAI-compatible completion (greedy) from the merged model; `merge` carries α and β."""
        service.check_merge(req.merge, "merge.")
        service.prompts(req)  # validated before the query is charged
        budgets.charge(tok)
        outs = service.complete(req)
        n_prompt = sum(len(p) for p in ([req.prompt] if isinstance(req.prompt, str) else req.prompt))
        return CompletionResponse(
            id=f"cmpl-{uuid.uuid4().hex[:12]}", created=int(time.time()), model=req.model,
            choices=[CompletionChoice(text=t, index=i, finish_reason=r) for i, (t, r) in enumerate(outs)],
            usage={"prompt_tokens": n_prompt, "completion_tokens": sum(len(t) for t, _ in outs),
                   "total_tokens": n_prompt + sum(len(t) for t, _ in outs)})

    return app
