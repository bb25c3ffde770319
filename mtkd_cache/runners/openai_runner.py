"""The openai backend: a teacher behind an OpenAI-compatible HTTP endpoint (`--backend openai`).

`--teacher NAME=MODEL@BASE_URL` names any server that speaks the OpenAI API (vLLM, llama.cpp server,
OpenAI itself). Class logits come from the label words' log-probabilities, in one of three modes, the
best the server supports (probed once before the build starts; the mode is recorded as `scoring`):
  echo               exact: /v1/completions with `echo` returns the log-probability of every prompt token,
                     so each row's K prompts (prompt + answer_space + verbalizer) score every verbalizer's
                     full token sequence (what vLLM and OpenAI's completion models offer).
  top-logprobs       approximate: the `top_logprobs` of a one-token completion; a class whose first word is
                     not among them gets the floor value (`logprob_floor`, or the row's lowest returned
                     log-probability if lower), and those cells are counted per shard in the manifest.
  chat-top-logprobs  the same through /v1/chat/completions (the shots as turns), for chat-only servers.

The API key is read from the environment variable named by --api-key-env when a request is made; it is
sent as a bearer token and never stored: the record holds MODEL@URL with the URL's userinfo, query and
fragment stripped, and no message quotes a server's error body without the key replaced.

Requests run `concurrency` at a time (threads over one pooled HTTP client: the work is waiting). A 429,
a 5xx, a timeout or a dropped connection is retried with exponential backoff (Retry-After honoured),
`retries` times; a row that still fails stops the build naming its sample ids, with the shards committed
so far kept, and re-running resumes. httpx is used directly rather than the `openai` client: it is already
installed (huggingface_hub depends on it), and the scoring needs only three JSON calls, with our own
retry and error rules rather than the client's.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from mtkd_cache.errors import ConfigError, TeacherError
from mtkd_cache.progress import ProgressEvents
from mtkd_cache.runners.prompts import Prompt, PromptConfig, Scoring, load_prompt

ECHO, TOP_LOGPROBS, CHAT_TOP_LOGPROBS = "echo", "top-logprobs", "chat-top-logprobs"
_TOP_K = {TOP_LOGPROBS: 5, CHAT_TOP_LOGPROBS: 20}  # OpenAI's caps for completions and chat
_RETRIED_STATUS = {408, 409, 429}
_MAX_BACKOFF = 30.0
_NAMED = 10


@dataclass(frozen=True)
class EndpointOptions:
    """How an endpoint teacher is called; the key itself never enters a config, a record or a message."""

    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": (
        "Environment variable holding the endpoint's API key (read at run time, never written anywhere).")})
    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once to an openai endpoint."})
    timeout: float = field(default=60.0, metadata={"help": "Seconds before an endpoint request is retried."})
    retries: int = field(default=6, metadata={"help": (
        "Retries of a request that got 429, 5xx or a timeout, with exponential backoff.")})
    backoff: float = field(default=0.5, metadata={"help": "Seconds before the first retry; doubled each time."})
    logprob_floor: float = field(default=-20.0, metadata={"help": (
        "Log-probability of a label missing from the returned top-k (top-logprobs modes; recorded).")})

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency must be positive, not {self.concurrency}.")
        if self.timeout <= 0:
            raise ConfigError(f"--request-timeout must be positive, not {self.timeout}.")
        if self.retries < 0:
            raise ConfigError(f"--retries must be 0 or more, not {self.retries}.")
        if self.backoff < 0 or not math.isfinite(self.logprob_floor) or self.logprob_floor > 0:
            raise ConfigError("the endpoint backoff must be 0 or more and the log-prob floor a number at most 0.")


@dataclass(frozen=True)
class Endpoint:
    """Where and how one endpoint teacher is asked; `auth` is the URL's userinfo (sent, never recorded)."""

    model: str
    base_url: str  # no userinfo, query or fragment: safe to record and to show
    auth: tuple[str, str] | None = field(repr=False)
    options: EndpointOptions
    mode: str = ""
    server_model: str = ""
    system_fingerprint: str = ""


def parse_endpoint(name: str, source: str) -> tuple[str, str, tuple[str, str] | None]:
    """MODEL@BASE_URL -> (model, cleaned URL, userinfo)."""
    model, sep, url = source.partition("@")
    parts = urlsplit(url)
    if not sep or not model or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"teacher '{name}': --backend openai takes NAME=MODEL@BASE_URL, e.g. "
                          "qwen=Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:8000/v1; the URL must be http(s).")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    clean = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    auth = (parts.username or "", parts.password or "") if parts.username or parts.password else None
    return model, clean, auth


class EndpointClient:
    """JSON calls to one endpoint with bounded retries; errors name the URL and status, never the key."""

    def __init__(self, name: str, endpoint: Endpoint):
        try:
            import httpx
        except ImportError:
            raise ConfigError("--backend openai needs the Python package httpx; install the package's openai extra "
                              "(pip install 'mtkd-cache[openai]').") from None

        self.httpx = httpx
        self.name = name
        self.endpoint = endpoint
        options = endpoint.options
        self.key_env = options.api_key_env
        key = os.environ.get(options.api_key_env)
        self._secrets = [s for s in (key, *(endpoint.auth or ())) if s]
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=endpoint.base_url, headers=headers, auth=endpoint.auth,
                                   timeout=options.timeout,
                                   limits=httpx.Limits(max_connections=options.concurrency,
                                                       max_keepalive_connections=options.concurrency))
        self.requests = 0
        self.tokens = 0

    def close(self) -> None:
        self.client.close()

    def call(self, method: str, path: str, body: dict | None = None, refusal_ok: bool = False) -> dict | None:
        """The response JSON; None for a 4xx refusal when `refusal_ok` (a probe of an optional feature)."""
        options = self.endpoint.options
        problem, retry_after = "", None
        for attempt in range(options.retries + 1):
            if attempt:
                time.sleep(_delay(options.backoff, attempt, retry_after))
            retry_after = None
            try:
                response = self.client.request(method, path, json=body)
            except self.httpx.TimeoutException:
                problem = f"no answer within {options.timeout:g} s"
                continue
            except self.httpx.RequestError as error:  # refused or dropped connections, protocol errors
                problem = f"cannot connect ({type(error).__name__})"
                continue
            self.requests += 1
            status = response.status_code
            if status in (401, 403):
                raise TeacherError(f"teacher '{self.name}': {self.endpoint.base_url} refused the API key ({status}); "
                                   f"set the environment variable {self.key_env} to a valid key.")
            if status in _RETRIED_STATUS or status >= 500:
                problem, retry_after = f"HTTP {status}", response.headers.get("Retry-After")
                continue
            if status >= 400:
                if refusal_ok:
                    return None
                raise TeacherError(f"teacher '{self.name}': {self.endpoint.base_url}{path} answered HTTP {status} "
                                   f"({self._redacted(response.text)}); check the model name and the options.")
            try:
                payload = response.json()
            except ValueError:
                raise TeacherError(f"teacher '{self.name}': {self.endpoint.base_url}{path} did not answer JSON; is "
                                   "BASE_URL the server's OpenAI API root (often ending in /v1)?") from None
            self.tokens += int((payload.get("usage") or {}).get("total_tokens") or 0)
            return payload
        raise EndpointFailure(problem, options.retries)

    def _redacted(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        line = " ".join(text.split())
        return line[:200] + ("…" if len(line) > 200 else "")


def _delay(backoff: float, attempt: int, retry_after: str | None) -> float:
    """Exponential backoff, at least what a Retry-After header asked for, at most 30 s."""
    delay = backoff * 2 ** (attempt - 1)
    if retry_after is not None:
        try:
            delay = max(delay, float(retry_after))
        except ValueError:
            pass
    return min(delay, _MAX_BACKOFF)


class EndpointFailure(TeacherError):
    """A request that failed after every retry (the caller names the rows it was for)."""

    def __init__(self, problem: str, retries: int):
        super().__init__(f"{problem} after {retries} retries")
        self.problem = problem


def resolve_endpoint(spec, task, prompt_config: PromptConfig, options: EndpointOptions):
    """An endpoint teacher: its cleaned source, prompt and scoring mode (probed on the server)."""
    from mtkd_cache.runners.teachers import ResolvedTeacher, TeacherSpec

    if spec.label_map:
        raise ConfigError(f"teacher '{spec.name}': an endpoint teacher is scored on the dataset's labels through "
                          "--verbalizers; drop its --label-map.")
    model, base_url, auth = parse_endpoint(spec.name, spec.source)
    has_pairs = any(split.text_pairs is not None for split in task.splits.values())
    prompt = load_prompt(prompt_config, task.label_names, task.splits, has_pairs, "openai")
    endpoint = Endpoint(model, base_url, auth, options)
    client = EndpointClient(spec.name, endpoint)
    try:
        endpoint = _probe(spec.name, client, endpoint, prompt, prompt_config.scoring)
    except EndpointFailure as failure:
        raise TeacherError(f"teacher '{spec.name}': {base_url} is not answering ({failure}); start the server or "
                           "check BASE_URL.") from None
    finally:
        client.close()
    labels = tuple(task.label_names)
    return ResolvedTeacher(
        spec=TeacherSpec(spec.name, f"{model}@{base_url}"), directory=Path(), revision=model,
        weights_sha256="", tokenizer_sha256="", model_label_names=labels, label_mapping=tuple(range(len(labels))),
        backend="openai", prompt=prompt, scoring=endpoint.mode, endpoint=endpoint,
    )


def _probe(name: str, client: EndpointClient, endpoint: Endpoint, prompt: Prompt, asked: Scoring) -> Endpoint:
    """The best scoring mode the server offers for what was asked, and what it says it is."""
    listed = client.call("GET", "/models", refusal_ok=True)
    served = [m.get("id") for m in (listed or {}).get("data", []) if isinstance(m, dict)]
    if served and endpoint.model not in served:
        raise ConfigError(f"teacher '{name}': {endpoint.base_url} serves {', '.join(map(str, served[:5]))}, not "
                          f"{endpoint.model}; name one of its models.")
    sample = prompt.render("hello", "hello" if "{text_pair}" in prompt.template else None)
    modes = {Scoring.SEQUENCE: (ECHO,), Scoring.FIRST_TOKEN: (TOP_LOGPROBS, CHAT_TOP_LOGPROBS),
             Scoring.AUTO: (ECHO, TOP_LOGPROBS, CHAT_TOP_LOGPROBS)}[asked]
    for mode in modes:
        if mode != ECHO:
            _check_first_words(name, prompt)
        payload = client.call("POST", *_request(mode, endpoint.model, sample, [" x"], prompt, None), refusal_ok=True)
        if payload is not None and _usable(mode, payload):
            return Endpoint(endpoint.model, endpoint.base_url, endpoint.auth, endpoint.options, mode,
                            str(payload.get("model") or ""), str(payload.get("system_fingerprint") or ""))
    wanted = "prompt log-probabilities (echo with logprobs)" if asked is Scoring.SEQUENCE else "log-probabilities"
    hint = "use --scoring first-token (top_logprobs)" if asked is Scoring.SEQUENCE else "use a server that returns them"
    raise ConfigError(f"teacher '{name}': {endpoint.base_url} does not return {wanted} for {endpoint.model}; {hint}.")


def _check_first_words(name: str, prompt: Prompt) -> None:
    firsts = [word.split()[0] for word in prompt.verbalizers]
    if len(set(firsts)) < len(firsts):
        raise ConfigError(f"teacher '{name}': the endpoint's top_logprobs give one token per class, and verbalizers "
                          f"{', '.join(prompt.verbalizers)} do not all start with different words; give them distinct "
                          "first words with --verbalizers, or use a server with echo (--scoring sequence).")


def _usable(mode: str, payload: dict) -> bool:
    try:
        choice = payload["choices"][0]
        if mode == ECHO:
            return any(v is not None for v in choice["logprobs"]["token_logprobs"]) and \
                len(choice["logprobs"]["text_offset"]) == len(choice["logprobs"]["token_logprobs"])
        if mode == TOP_LOGPROBS:
            return bool(choice["logprobs"]["top_logprobs"][0])
        return bool(choice["logprobs"]["content"][0]["top_logprobs"])
    except (KeyError, IndexError, TypeError):
        return False


def _request(mode: str, model: str, rendered: str, continuations: list[str], prompt: Prompt,
             messages: list[dict] | None) -> tuple[str, dict]:
    if mode == ECHO:
        return "/completions", {"model": model, "prompt": [rendered + c for c in continuations], "max_tokens": 1,
                                "echo": True, "logprobs": 1, "temperature": 0}
    if mode == TOP_LOGPROBS:
        return "/completions", {"model": model, "prompt": rendered, "max_tokens": 1, "logprobs": _TOP_K[mode],
                                "temperature": 0}
    messages = messages or [{"role": "user", "content": rendered}]
    return "/chat/completions", {"model": model, "messages": messages, "max_tokens": 1, "logprobs": True,
                                 "top_logprobs": _TOP_K[mode], "temperature": 0}


@dataclass
class RenderedRows:
    """A split's rows for an endpoint teacher: its texts, rendered into prompts when each row is sent."""

    split: str
    texts: list[str]
    pairs: list[str] | None
    truncated_rows: int = 0  # an endpoint sees whole prompts


class EndpointTeacher:
    """An endpoint teacher (a `TeacherRunner` that prepares and schedules its own rows)."""

    def __init__(self, resolved):
        self.name = resolved.spec.name
        self.endpoint: Endpoint = resolved.endpoint
        self.prompt: Prompt = resolved.prompt
        self.mode = self.endpoint.mode
        self.tokenizer = None
        self.pad_id, self.pad_left = 0, False
        self.attn_implementation = ""
        self.providers: list[str] = []
        self.client = EndpointClient(self.name, self.endpoint)
        self._reports: dict = {}
        self._words = [_first_word(w) for w in self.prompt.verbalizers]

    def close(self) -> None:
        self.client.close()

    def prepare(self, split: str, texts: list[str], pairs: list[str] | None, max_length: int) -> RenderedRows:
        return RenderedRows(split, texts, pairs)

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        raise TypeError("an endpoint teacher scores rows through score_rows, not token batches")

    def reports(self) -> dict:
        """What the last `score_rows` call found: the server's model id and fingerprint, floored cells."""
        return dict(self._reports)

    def score_rows(self, rows: RenderedRows, start: int, end: int, events: ProgressEvents) -> np.ndarray:
        """float32 class logits [end - start, K], `concurrency` rows in flight; a failing row stops it by id."""
        out = np.empty((end - start, len(self.prompt.verbalizers)), dtype=np.float32)
        floored = [0]
        server = {}
        requests, tokens, started = self.client.requests, self.client.tokens, time.perf_counter()

        def one(row: int) -> None:
            scores, row_floored, payload = self._score(rows, row)
            out[row - start] = scores
            floored[0] += row_floored
            server["model"], server["fingerprint"] = payload.get("model"), payload.get("system_fingerprint")

        failed: list[int] = []
        problem = ""
        with ThreadPoolExecutor(self.endpoint.options.concurrency, thread_name_prefix="mtkd-endpoint") as pool:
            futures = {pool.submit(one, row): row for row in range(start, end)}
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                error = future.exception()
                if error is None:
                    events.advance(1)
                    continue
                for other in futures:  # stop sending; the requests in flight finish
                    other.cancel()
                if not isinstance(error, EndpointFailure):
                    raise error
                failed.append(futures[future])
                problem = error.problem
        if failed:
            ids = sorted(failed)
            raise TeacherError(
                f"teacher '{self.name}': {self.endpoint.base_url} failed on split '{rows.split}' for sample ids "
                f"{', '.join(map(str, ids[:_NAMED]))}{' …' if len(ids) > _NAMED else ''} ({problem} after "
                f"{self.endpoint.options.retries} retries); the shards committed so far are kept: re-run to resume.")
        seconds = max(time.perf_counter() - started, 1e-9)
        events.note(f"{self.name} · {rows.split} rows {start}-{end}: {(self.client.requests - requests) / seconds:.1f} "
                    f"requests/s, {(self.client.tokens - tokens) / seconds:,.0f} tokens/s")
        self._reports = {"server_model": server.get("model") or "", "system_fingerprint": server.get("fingerprint") or ""}
        if self.mode != ECHO:
            self._reports["floored_cells"] = floored[0]
            self._reports["logprob_floor"] = self.endpoint.options.logprob_floor
        return out

    def _score(self, rows: RenderedRows, row: int) -> tuple[np.ndarray, int, dict]:
        pair = rows.pairs[row] if rows.pairs is not None else None
        rendered = self.prompt.render(rows.texts[row], pair, rows.split, row)
        continuations = [Prompt.answer_space(rendered) + word for word in self.prompt.verbalizers]
        messages = self.prompt.messages(rows.texts[row], pair, rows.split, row) if self.mode == CHAT_TOP_LOGPROBS else None
        path, body = _request(self.mode, self.endpoint.model, rendered, continuations, self.prompt, messages)
        payload = self.client.call("POST", path, body)
        try:
            if self.mode == ECHO:
                return self._echo_scores(payload, rendered, continuations), 0, payload
            scores, floored = self._top_scores(payload)
            return scores, floored, payload
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise TeacherError(f"teacher '{self.name}': {self.endpoint.base_url} answered sample {row} of split "
                               f"'{rows.split}' without the log-probabilities asked for ({type(error).__name__}: "
                               f"{error}); is it an OpenAI-compatible server?") from None

    def _echo_scores(self, payload: dict, rendered: str, continuations: list[str]) -> np.ndarray:
        """Sum of the log-probabilities of the tokens from the prompt's end to the continuation's end."""
        choices = sorted(payload["choices"], key=lambda c: c.get("index", 0))
        scores = np.empty(len(continuations), dtype=np.float32)
        boundary = len(rendered)
        for c, (choice, continuation) in enumerate(zip(choices, continuations, strict=True)):
            logprobs = choice["logprobs"]
            end = boundary + len(continuation)
            picked = [lp for offset, lp in zip(logprobs["text_offset"], logprobs["token_logprobs"])
                      if boundary <= offset < end]
            if not picked or any(lp is None for lp in picked):
                raise ValueError(f"no log-probabilities for the tokens of {continuation!r}")
            scores[c] = float(sum(picked))
        return scores

    def _top_scores(self, payload: dict) -> tuple[np.ndarray, int]:
        """Each class's log-probability from the first token's top-k (summed over the returned tokens that start
        its word and no other class's); the floor for a class none starts."""
        choice = payload["choices"][0]
        if self.mode == TOP_LOGPROBS:
            top = choice["logprobs"]["top_logprobs"][0]
        else:
            top = {item["token"]: item["logprob"] for item in choice["logprobs"]["content"][0]["top_logprobs"]}
        floor = min(self.endpoint.options.logprob_floor, *(float(v) for v in top.values()))
        found: list[list[float]] = [[] for _ in self._words]
        for token, logprob in top.items():
            piece = _first_word(token)
            matches = [c for c, word in enumerate(self._words) if piece and word.startswith(piece)]
            if len(matches) == 1:
                found[matches[0]].append(float(logprob))
        scores = np.array([np.logaddexp.reduce(values) if values else floor for values in found], dtype=np.float32)
        return scores, sum(1 for values in found if not values)


def _first_word(text: str) -> str:
    """A token or verbalizer as compared: leading whitespace and word-start markers (Ġ, ▁) dropped."""
    return text.lstrip().lstrip("Ġ▁").lstrip()
