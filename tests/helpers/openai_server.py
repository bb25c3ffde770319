"""A protocol-faithful OpenAI-compatible test server on 127.0.0.1, backed by a tiny local causal LM.

Written for the endpoint backend's tests because no real server that returns log-probabilities runs on
this machine offline: `transformers serve` (5.3) refuses `logprobs`, `top_logprobs` and `echo` (its
completion and chat handlers list them as unsupported), and llama.cpp needs a GGUF model. It implements
the parts of the OpenAI API those servers (vLLM, llama.cpp, OpenAI) share for scoring:

  GET  /v1/models
  POST /v1/completions       prompt (a string or a list), max_tokens, logprobs (top-k), echo: with echo and
                             max_tokens 0 the prompt's own tokens come back with their log-probabilities
                             (`tokens`, `token_logprobs` with None first, `top_logprobs`, `text_offset`).
  POST /v1/chat/completions  messages, max_tokens, logprobs + top_logprobs (`logprobs.content[]`).

Responses carry `model`, `system_fingerprint` and `usage`. Run it as a process (so a test can kill it):
  python -m helpers.openai_server MODEL_DIR --port 0 [--api-key KEY]
It prints `listening on PORT` once ready. Tests steer it with POST /_control (not part of the API), a JSON
object of: `fail` [statuses] (the next scoring requests get these, with a Retry-After of 0), `echo` false
(echo requests get 400, like servers without prompt logprobs), `die_after` N (the process exits after N
more scoring requests: a server killed mid-build). `GET /_control` returns the request counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SERVED_NAME = "tiny-llama"
FINGERPRINT = "fp_test_0001"


class TinyModel:
    def __init__(self, directory: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.model = AutoModelForCausalLM.from_pretrained(directory).eval()
        self.lock = threading.Lock()

    def log_probs(self, text: str):
        """(token ids, char offsets, log-softmax [T, V]) of the prompt; row t predicts token t+1."""
        encoded = self.tokenizer(text, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        with self.lock, self.torch.inference_mode():
            logits = self.model(self.torch.tensor([ids])).logits[0].float()
        return ids, [start for start, _ in encoded["offset_mapping"]], self.torch.log_softmax(logits, -1)

    def token(self, token_id: int) -> str:
        return self.tokenizer.convert_ids_to_tokens(token_id)

    def top(self, row, k: int) -> dict[str, float]:
        values, indices = row.topk(k)
        return {self.token(int(i)): float(v) for v, i in zip(values, indices)}


def make_handler(model: TinyModel, api_key: str | None):
    state = {"failures": [], "echo": True, "die_after": None, "scoring_requests": 0, "refused": 0}
    fail_lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: the test reads stdout for the port only
            pass

        def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, headers: dict | None = None) -> None:
            self._send(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}}, headers)

        def _authorized(self) -> bool:
            if api_key is None:
                return True
            if self.headers.get("Authorization") != f"Bearer {api_key}":
                self._error(401, "Incorrect API key provided.")
                return False
            return True

        def do_GET(self) -> None:
            if self.path == "/_control":
                self._send(200, {k: state[k] for k in ("scoring_requests", "refused")})
                return
            if not self._authorized():
                return
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": SERVED_NAME, "object": "model", "owned_by": "test"}]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._error(400, "body is not JSON")
                return
            if self.path == "/_control":
                with fail_lock:
                    state["failures"] = list(body.get("fail", state["failures"]))
                    state["echo"] = bool(body.get("echo", state["echo"]))
                    state["die_after"] = body.get("die_after", state["die_after"])
                self._send(200, {"ok": True})
                return
            if not self._authorized():
                return
            with fail_lock:
                status = state["failures"].pop(0) if state["failures"] else None
                state["refused" if status else "scoring_requests"] += 1
                if state["die_after"] is not None:
                    state["die_after"] -= 1
                    if state["die_after"] < 0:
                        os._exit(1)  # killed mid-build: the connection drops without an answer
            if status is not None:
                self._error(status, "Rate limit reached (injected).", {"Retry-After": "0"})
                return
            if self.path.rstrip("/") == "/v1/completions":
                self._completions(body)
            elif self.path.rstrip("/") == "/v1/chat/completions":
                self._chat(body)
            else:
                self._error(404, f"no route {self.path}")

        def _envelope(self, kind: str, choices: list, prompt_tokens: int, completion_tokens: int) -> dict:
            return {"id": "cmpl-test", "object": kind, "created": 0, "model": SERVED_NAME,
                    "system_fingerprint": FINGERPRINT, "choices": choices,
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens}}

        def _completions(self, body: dict) -> None:
            prompts = body.get("prompt")
            prompts = [prompts] if isinstance(prompts, str) else prompts
            if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
                self._error(400, "prompt must be a string or a list of strings")
                return
            max_tokens, k, want_echo = body.get("max_tokens", 16), body.get("logprobs"), bool(body.get("echo"))
            if want_echo and not state["echo"]:
                self._error(400, "echo is not supported")
                return
            choices, prompt_tokens, completion_tokens = [], 0, 0
            for index, prompt in enumerate(prompts):
                ids, offsets, log_probs = model.log_probs(prompt)
                prompt_tokens += len(ids)
                tokens, token_logprobs, tops, text_offset, text = [], [], [], [], ""
                if want_echo:
                    for t, token_id in enumerate(ids):
                        tokens.append(model.token(token_id))
                        token_logprobs.append(None if t == 0 else float(log_probs[t - 1, token_id]))
                        tops.append(None if t == 0 or not k else model.top(log_probs[t - 1], k))
                        text_offset.append(offsets[t])
                    text = prompt
                if max_tokens:
                    best = int(log_probs[-1].argmax())
                    tokens.append(model.token(best))
                    token_logprobs.append(float(log_probs[-1, best]))
                    tops.append(model.top(log_probs[-1], k) if k else None)
                    text_offset.append(len(text))
                    text += model.token(best)
                    completion_tokens += 1
                logprobs = {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops,
                            "text_offset": text_offset} if k is not None else None
                choices.append({"index": index, "text": text, "logprobs": logprobs,
                                "finish_reason": "length"})
            self._send(200, self._envelope("text_completion", choices, prompt_tokens, completion_tokens))

        def _chat(self, body: dict) -> None:
            messages = body.get("messages")
            if not isinstance(messages, list):
                self._error(400, "messages must be a list")
                return
            prompt = model.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids, _, log_probs = model.log_probs(prompt)
            best = int(log_probs[-1].argmax())
            content = None
            if body.get("logprobs"):
                k = int(body.get("top_logprobs") or 0)
                content = [{"token": model.token(best), "logprob": float(log_probs[-1, best]),
                            "top_logprobs": [{"token": t, "logprob": v} for t, v in model.top(log_probs[-1], k).items()]}]
            choice = {"index": 0, "message": {"role": "assistant", "content": model.token(best)},
                      "logprobs": {"content": content} if content is not None else None, "finish_reason": "length"}
            self._send(200, self._envelope("chat.completion", [choice], len(ids), 1))

    return Handler


class RunningServer:
    """A server process started by a test: its base URL, a control call, and a stop that waits for it."""

    def __init__(self, model_dir: Path, api_key: str | None = None, port: int = 0):
        import subprocess

        argv = [sys.executable, "-m", "helpers.openai_server", str(model_dir), "--port", str(port)]
        if api_key:
            argv += ["--api-key", api_key]
        tests_dir = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"the test server did not start: {line!r}")
        self.port = int(line.split()[-1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def control(self, **settings) -> dict:
        import httpx

        if settings:
            return httpx.post(f"http://127.0.0.1:{self.port}/_control", json=settings).json()
        return httpx.get(f"http://127.0.0.1:{self.port}/_control").json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        if self.process.stdout:
            self.process.stdout.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key")
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(TinyModel(args.model), args.api_key))
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
