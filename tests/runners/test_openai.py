"""--backend openai against an OpenAI-compatible server process on 127.0.0.1 (tests/helpers/openai_server.py,
a protocol-faithful server written for these tests: `transformers serve` returns no log-probabilities).

Exact (echo) scores equal a direct computation with the served model; a server without echo falls back to
top_logprobs with floored cells counted; 429s are retried; a server killed mid-build stops it with one
line naming the rows, committed shards kept, and a re-run completes bit-identically; the key is nowhere."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from helpers.assets import LABELS, write_dataset
from helpers.causal_lms import make_causal_lm, write_prompt
from helpers.cli import assert_user_error
from helpers.faults import assert_same_contents, error_lines, listed_paths
from helpers.openai_server import FINGERPRINT, SERVED_NAME, RunningServer
from mtkd_cache import BuildConfig, DatasetSpec, RunnerConfig, TeacherSpec, build_cache, open_cache
from mtkd_cache.cache.manifest import load_manifest
from mtkd_cache.errors import ConfigError
from mtkd_cache.layout import outputs_path
from mtkd_cache.runners.openai_runner import EndpointOptions, parse_endpoint
from mtkd_cache.runners.prompts import PromptConfig
from mtkd_cache_cli.app import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")
cli = CliRunner()
KEY = "sk-test-7f3a9c1e5b2d4a6f8e0c"
KEY_ENV = "MTKD_TEST_ENDPOINT_KEY"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    assets = {"data": write_dataset(root / "data", sizes=(("train", 16), ("test", 8))),
              "model": make_causal_lm(root / "llama", "llama", seed=11), "prompt": write_prompt(root / "prompt.txt")}
    server = RunningServer(assets["model"], api_key=KEY)
    os.environ[KEY_ENV] = KEY
    yield {**assets, "server": server}
    server.stop()
    os.environ.pop(KEY_ENV, None)


def _config(served, out, url=None, scoring="auto", **endpoint):
    url = url or served["server"].base_url
    return BuildConfig(dataset=DatasetSpec(source=str(served["data"])),
                       teachers=(TeacherSpec("api", f"{SERVED_NAME}@{url}"),), out=out,
                       runner=RunnerConfig(backend="openai"), shard_rows=8,
                       prompt=PromptConfig(template=served["prompt"], scoring=scoring),
                       endpoint=EndpointOptions(api_key_env=KEY_ENV, backoff=0.01, **endpoint))


@pytest.fixture(scope="module")
def echo_cache(served, tmp_path_factory):
    out = tmp_path_factory.mktemp("echo") / "cache"
    build_cache(_config(served, out))
    return out


def _direct(served, texts, prompt_of):
    """log P(' ' + label | prompt) with the served model, each row alone (the server adds BOS)."""
    tokenizer = AutoTokenizer.from_pretrained(served["model"])
    model = AutoModelForCausalLM.from_pretrained(served["model"]).eval()
    out = np.zeros((len(texts), len(LABELS)))
    with torch.inference_mode():
        for row, text in enumerate(texts):
            ids = tokenizer(prompt_of(row, text))["input_ids"]
            for c, label in enumerate(LABELS):
                token = tokenizer(label, add_special_tokens=False)["input_ids"]
                logp = torch.log_softmax(model(torch.tensor([ids + token])).logits[0].float(), -1)
                out[row, c] = logp[len(ids) - 1, token[0]].item()
    return out


def test_echo_scores_equal_a_direct_computation_and_the_server_is_recorded(served, echo_cache):
    teacher = load_manifest(echo_cache).teachers["api"]
    assert (teacher.backend, teacher.scoring, teacher.device, teacher.dtype) == ("openai", "echo", "endpoint", "server")
    assert teacher.server_model == SERVED_NAME and teacher.system_fingerprint == FINGERPRINT
    template = served["prompt"].read_text()
    cache = open_cache(echo_cache)
    for split in ("train", "test"):
        texts = cache.inputs(split).texts
        direct = _direct(served, texts, lambda row, text: template.replace("{text}", text))
        np.testing.assert_allclose(cache.teacher_outputs(split).logits[:, 0].astype(np.float64), direct,
                                   rtol=1e-3, atol=2e-3)


def test_without_echo_top_logprobs_with_floored_cells_counted(served, tmp_path):
    served["server"].control(echo=False)
    try:
        with pytest.raises(ConfigError, match="does not return prompt log-probabilities"):
            build_cache(_config(served, tmp_path / "x", scoring="sequence"))
        out = tmp_path / "c"
        build_cache(_config(served, out))
    finally:
        served["server"].control(echo=True)
    teacher = load_manifest(out).teachers["api"]
    assert teacher.scoring == "top-logprobs" and teacher.logprob_floor == -20.0
    cache = open_cache(out)
    template = served["prompt"].read_text()
    total_floored = 0
    for split in ("train", "test"):
        direct, in_top, lowest = _direct_first_token(served, cache.inputs(split).texts, template)
        expected = np.where(in_top, direct, np.minimum(-20.0, lowest)[:, None])
        np.testing.assert_allclose(cache.teacher_outputs(split).logits[:, 0].astype(np.float64), expected, atol=2e-2)
        assert teacher.floored_per_split()[split] == int((~in_top).sum())
        total_floored += int((~in_top).sum())
    assert 0 < total_floored < 3 * 24  # the fixture exercises both returned and floored cells


def _direct_first_token(served, texts, template):
    """Per row: each label's next-token log-prob, whether it is in the top 5, and the 5th-best log-prob."""
    tokenizer = AutoTokenizer.from_pretrained(served["model"])
    model = AutoModelForCausalLM.from_pretrained(served["model"]).eval()
    labels = [tokenizer(label, add_special_tokens=False)["input_ids"][0] for label in LABELS]
    rows = []
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(template.replace("{text}", text))["input_ids"]
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
            top = logp.topk(5)
            rows.append(([logp[t].item() for t in labels], [t in top.indices.tolist() for t in labels],
                         top.values[-1].item()))
    return (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows]))


def test_injected_429s_are_retried_to_the_same_logits(served, echo_cache, tmp_path):
    served["server"].control(fail=[429] * 5)
    before = served["server"].control()["refused"]
    out = tmp_path / "c"
    build_cache(_config(served, out, concurrency=2))
    assert served["server"].control()["refused"] - before == 5
    assert_same_contents(out, echo_cache)


def test_server_killed_mid_build_then_rerun_completes(served, echo_cache, tmp_path):
    own = RunningServer(served["model"], api_key=KEY)
    try:
        own.control(die_after=10)  # 1 probe, 8 rows of the first shard, then one more request
        out = tmp_path / "c"
        argv = ["build", "--dataset", str(served["data"]), "--out", str(out), "--shard-rows", "8", "--backend", "openai",
                "--teacher", f"api={SERVED_NAME}@{own.base_url}", "--prompt", str(served["prompt"]),
                "--api-key-env", KEY_ENV, "--concurrency", "1", "--retries", "1"]
        result = cli.invoke(app, argv)
        assert result.exit_code == 2 and "Traceback" not in result.output
        (error,) = error_lines(result.stderr)  # one line, after the progress lines
        assert "failed on split 'train' for sample ids 9" in error and "cannot connect" in error
        assert "the shards committed so far are kept" in error
        kept = {p for p in listed_paths(out) if p.startswith("outputs/")}
        assert kept == {outputs_path("api", "train", 0, 8)}
    finally:
        own.stop()
    argv[argv.index("--teacher") + 1] = f"api={SERVED_NAME}@{served['server'].base_url}"  # the server is back
    rerun = cli.invoke(app, argv)
    assert rerun.exit_code == 0, rerun.output
    assert "2 shard(s) written, 4 reused" in rerun.stderr  # the teacher's first shard and the 3 input shards kept
    assert_same_contents(out, echo_cache)


def test_the_key_and_the_urls_secrets_never_reach_a_file(served, tmp_path):
    out = tmp_path / "c"
    url = served["server"].base_url + "?token=query-secret-55#frag"
    result = cli.invoke(app, ["build", "--dataset", str(served["data"]), "--out", str(out), "--backend", "openai",
                              "--teacher", f"api={SERVED_NAME}@{url}", "--prompt", str(served["prompt"]),
                              "--api-key-env", KEY_ENV, "--shard-rows", "8"])
    assert result.exit_code == 0, result.output
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert KEY.encode() not in data and b"query-secret-55" not in data, path
    assert KEY not in result.output
    assert load_manifest(out).teachers["api"].source == f"{SERVED_NAME}@{served['server'].base_url}"
    info = json.loads(cli.invoke(app, ["info", str(out), "--json"]).stdout)["teachers"][0]
    assert info["backend"] == "openai" and info["scoring"] == "echo" and len(info["prompt_sha256"]) == 64
    assert info["verbalizers"] == dict(zip(LABELS, LABELS))


def test_a_wrong_key_is_one_line_without_the_key(served, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key-123456")
    result = cli.invoke(app, ["build", "--dataset", str(served["data"]), "--out", str(tmp_path / "c"), "--backend",
                              "openai", "--teacher", f"api={SERVED_NAME}@{served['server'].base_url}", "--prompt",
                              str(served["prompt"]), "--api-key-env", KEY_ENV])
    assert_user_error(result, "refused the API key (401)", f"set the environment variable {KEY_ENV}")
    assert "sk-wrong-key" not in result.output and not (tmp_path / "c").exists()


def test_parse_endpoint_strips_userinfo_query_and_fragment():
    model, url, auth = parse_endpoint("t", "org/model-7b@https://me:pw@host.example:8443/v1/?key=abc#x")
    assert (model, url, auth) == ("org/model-7b", "https://host.example:8443/v1", ("me", "pw"))
    with pytest.raises(ConfigError, match="NAME=MODEL@BASE_URL"):
        parse_endpoint("t", "just-a-model")


@pytest.mark.skipif(not os.environ.get("MTKD_REAL_OPENAI_URL"), reason=(
    "needs a real OpenAI-compatible server: set MTKD_REAL_OPENAI_URL=MODEL@BASE_URL (and OPENAI_API_KEY)"))
def test_a_real_server(tmp_path):
    """Where a real server runs (vLLM, llama.cpp, OpenAI): a build completes with finite logits and a mode."""
    data = write_dataset(tmp_path / "data", sizes=(("train", 8), ("test", 4)))
    config = BuildConfig(dataset=DatasetSpec(source=str(data)),
                         teachers=(TeacherSpec("real", os.environ["MTKD_REAL_OPENAI_URL"]),), out=tmp_path / "c",
                         runner=RunnerConfig(backend="openai"),
                         prompt=PromptConfig(template=write_prompt(tmp_path / "p.txt")))
    build_cache(config)
    teacher = load_manifest(config.out).teachers["real"]
    assert teacher.scoring in ("echo", "top-logprobs", "chat-top-logprobs") and teacher.server_model
    assert np.isfinite(open_cache(config.out).teacher_outputs("test").logits).all()
