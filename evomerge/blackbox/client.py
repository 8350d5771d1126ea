"""The user's side of black-box merging: an HTTP client of the merge service that never holds a weight.

It sends α, β and examples and receives scalars. Rate limits (429), server errors (5xx), time-outs and refused or
dropped connections are retried with exponential backoff (capped, or as Retry-After says) for at least
`retries` attempts and at least `retry_window_s` seconds (60 by default), so a service restart is waited out; what
still fails then is a `TransportFailure`: not the candidate's fault, so a resumed run asks it again. A used-up
budget (the client's own or the server's) and any other 4xx are not retried — they would fail again. Every
answered query is counted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from evomerge.errors import require_extra

require_extra("blackbox", "black-box merging")  # one clear line when the extra is missing

import httpx  # noqa: E402

from evomerge.errors import ConfigError, EvomergeError  # noqa: E402


class ServiceError(EvomergeError):
    """The service refused or failed a query (after retries where a retry could help)."""


class BudgetExhausted(ServiceError):
    """No queries left: the client's own budget or the token's budget on the server."""


class TransportFailure(ServiceError):
    """The service could not be reached or kept failing (connection, time-out, 5xx, 429) for the whole retry
    window: says nothing about the query itself."""


def read_token(env: str | None, file: Path | None) -> str:
    """The API token, from an environment variable or a file (its first line). Never logged or stored."""
    if env and os.environ.get(env):
        return os.environ[env].strip()
    if file is not None:
        if not file.is_file():
            raise ConfigError(f"service.token_file: {file} not found (expected a file holding the API token)")
        token = file.read_text().strip().splitlines()
        if token and token[0].strip():
            return token[0].strip()
    raise ConfigError(f"service: no API token (set the environment variable {env or '(service.token_env)'} or "
                      "service.token_file)")


class MergeClient:
    RETRY_STATUS = frozenset({429, 500, 502, 503, 504})

    def __init__(self, url: str, token: str, *, max_queries: int | None = None, retries: int = 4,
                 backoff_s: float = 0.25, timeout_s: float = 60.0, retry_window_s: float = 60.0,
                 max_backoff_s: float = 5.0):
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                                  timeout=timeout_s)
        self.max_queries, self.retries, self.backoff_s = max_queries, retries, backoff_s
        self.retry_window_s, self.max_backoff_s = retry_window_s, max_backoff_s
        self.queries = 0  # answered evaluate/complete queries (what the budget counts)
        self.retried = 0

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MergeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, path: str, json: dict | None = None, counted: bool = False) -> dict:
        if counted and self.max_queries is not None and self.queries >= self.max_queries:
            raise BudgetExhausted(f"query budget of {self.max_queries} used up")
        start, attempt = time.monotonic(), 0
        while True:
            wait = None
            try:
                r = self._http.request(method, path, json=json)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code < 400:
                    if counted:
                        self.queries += 1
                    return r.json()
                detail = _detail(r)
                if detail.get("code") == "budget_exhausted":
                    raise BudgetExhausted(f"{path}: the server's query budget for this token is used up")
                last = f"HTTP {r.status_code}: {detail.get('message', r.text[:200])}"
                if r.status_code not in self.RETRY_STATUS:
                    raise ServiceError(f"{path}: {last}")
                after = r.headers.get("retry-after", "")
                wait = float(after) if after.isdigit() else None
            attempt += 1
            wait = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) if wait is None else wait
            if attempt > self.retries and time.monotonic() - start + wait > self.retry_window_s:
                break
            self.retried += 1
            time.sleep(wait)
        raise TransportFailure(f"{path}: failed after {attempt} attempts in {time.monotonic() - start:.0f} s "
                               f"({last})")

    def adapters(self) -> list[str]:
        return self._request("GET", "/v1/adapters")["data"]

    def evaluate(self, alpha, beta, examples: list[dict], accuracy: bool = False, per_example: bool = False) -> dict:
        body = {"alpha": [float(a) for a in alpha], "beta": [float(b) for b in beta],
                "examples": [{"prompt": e["prompt"], "answer": e["answer"]} for e in examples],
                "accuracy": accuracy, "per_example": per_example}
        return self._request("POST", "/v1/merges/evaluate", body, counted=True)

    def complete(self, alpha, beta, prompts: list[str], max_tokens: int = 16) -> list[str]:
        body = {"prompt": prompts, "max_tokens": max_tokens,
                "merge": {"alpha": [float(a) for a in alpha], "beta": [float(b) for b in beta]}}
        return [c["text"] for c in self._request("POST", "/v1/completions", body, counted=True)["choices"]]


def _detail(r: httpx.Response) -> dict:
    try:
        d = r.json().get("detail")
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {"message": str(d)}
