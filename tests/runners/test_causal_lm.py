"""--backend causal-lm: cached class logits equal a direct computation of the verbalizer log-probabilities,
prompts render as documented, identity changes are refused by field, the CLI records what it scored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from helpers.assets import LABELS, write_dataset
from helpers.causal_lms import PROMPT, SHARED_FIRST_TOKEN, make_causal_lm, write_prompt
from mtkd_cache import BuildConfig, DatasetSpec, RunnerConfig, TeacherSpec, build_cache, open_cache
from mtkd_cache.cache.manifest import load_manifest
from mtkd_cache.errors import CacheMismatchError, ConfigError
from mtkd_cache.runners.causal_lm import resolve_causal_lm
from mtkd_cache.runners.prompts import PromptConfig, parse_verbalizers
from mtkd_cache_cli.app import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")
cli = CliRunner()


@pytest.fixture(scope="module")
def lm_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    return {"data": write_dataset(root / "data", sizes=(("train", 24), ("validation", 8), ("test", 12))),
            "llama": make_causal_lm(root / "llama", "llama", seed=3), "gpt2": make_causal_lm(root / "gpt2", "gpt2", seed=4),
            "prompt": write_prompt(root / "prompt.txt"), "root": root}


def _config(lm_assets, out, arch, **prompt):
    return BuildConfig(dataset=DatasetSpec(source=str(lm_assets["data"])), teachers=(TeacherSpec(arch, str(lm_assets[arch])),),
                       out=out, runner=RunnerConfig(backend="causal-lm", max_length=512), shard_rows=8,
                       prompt=PromptConfig(template=lm_assets["prompt"], **prompt))


def _direct_class_logits(directory, prompt, split, texts, verbalizers, chat):
    """Each row alone, unpadded: log P(verbalizer | prompt) summed over the verbalizer's tokens."""
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    out = np.zeros((len(texts), len(verbalizers)))
    with torch.inference_mode():
        for row, text in enumerate(texts):
            rendered = prompt.render(text, None, split, row)
            ids = tokenizer(rendered, add_special_tokens=not chat)["input_ids"]
            for c, word in enumerate(verbalizers):
                cont = tokenizer(word, add_special_tokens=False)["input_ids"]
                logp = torch.log_softmax(model(torch.tensor([ids + cont])).logits[0].float(), -1)
                out[row, c] = sum(logp[len(ids) - 1 + j, token].item() for j, token in enumerate(cont))
    return out


@pytest.mark.parametrize(("arch", "verbalizers", "shots", "mode"), [
    ("llama", "", 2, "first-token"), ("gpt2", "", 0, "first-token"),
    ("llama", SHARED_FIRST_TOKEN, 0, "sequence"), ("gpt2", SHARED_FIRST_TOKEN, 3, "sequence"),
])
def test_cached_logits_equal_a_direct_computation(lm_assets, tmp_path, arch, verbalizers, shots, mode):
    words = parse_verbalizers(verbalizers)
    config = _config(lm_assets, tmp_path / "c", arch, verbalizers=words, shots=shots)
    build_cache(config)
    teacher = load_manifest(config.out).teachers[arch]
    assert teacher.scoring == mode and teacher.backend == "causal-lm"
    resolved = resolve_causal_lm(config.teachers[0], _task(lm_assets), config.prompt)
    cache = open_cache(config.out)
    for split in ("train", "test"):
        texts = cache.inputs(split).texts
        direct = _direct_class_logits(lm_assets[arch], resolved.prompt, split, texts,
                                      [dict(words).get(label, label) for label in LABELS], chat=arch == "llama")
        if mode == "first-token":  # one token per verbalizer here: the full sequence is the first token
            assert all(len(w.split()) == 1 for w in resolved.prompt.verbalizers)
        cached = cache.teacher_outputs(split).logits[:, 0].astype(np.float64)
        np.testing.assert_allclose(cached, direct, rtol=1e-3, atol=2e-3)  # float16 storage
        assert np.array_equal(cache.teacher_outputs(split).preds[:, 0], cached.argmax(axis=1))


def _task(lm_assets):
    from mtkd_cache.data.datasets import load_task_data

    return load_task_data(DatasetSpec(source=str(lm_assets["data"])))


def test_sequence_scoring_is_first_token_plus_the_rest(lm_assets, tmp_path):
    """auto picks sequence for shared first tokens; asking first-token for them is refused by name."""
    words = parse_verbalizers(SHARED_FIRST_TOKEN)
    with pytest.raises(ConfigError, match="distinct first tokens.*--scoring sequence"):
        build_cache(_config(lm_assets, tmp_path / "x", "gpt2", verbalizers=words, scoring="first-token"))
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="qqq, zzz tokenize to the same tokens"):  # both unknown words
        build_cache(_config(lm_assets, tmp_path / "y", "gpt2", verbalizers=(("sports", "qqq"), ("tech", "zzz"))))


def test_chat_template_and_few_shot_prompt_render_as_documented(lm_assets):
    prompt = resolve_causal_lm(TeacherSpec("llama", str(lm_assets["llama"])), _task(lm_assets),
                               PromptConfig(template=lm_assets["prompt"], shots=1, shots_seed=5)).prompt
    shot = prompt.shots[0]
    expected = ("<s><|user|>\n" + PROMPT.replace("{text}", shot.text) + "\n<|assistant|>\n" + LABELS[shot.label]
                + "\n<|user|>\n" + PROMPT.replace("{text}", "hello there") + "\n<|assistant|>\n")
    assert prompt.render("hello there", None, "test", 0) == expected
    # A row of the shots split never sees itself: it gets the spare shot instead.
    own = prompt.render("x", None, "train", shot.sample_id)
    assert PROMPT.replace("{text}", shot.text) not in own
    assert PROMPT.replace("{text}", prompt.shots[1].text) in own

    plain = resolve_causal_lm(TeacherSpec("gpt2", str(lm_assets["gpt2"])), _task(lm_assets),
                              PromptConfig(template=lm_assets["prompt"], shots=1, shots_seed=5)).prompt
    assert plain.render("hello", None, "test", 0) == (PROMPT.replace("{text}", shot.text) + " " + LABELS[shot.label]
                                                      + "\n\n" + PROMPT.replace("{text}", "hello"))


def test_calibration_subtracts_the_content_free_class_distribution(lm_assets, tmp_path):
    plain = _config(lm_assets, tmp_path / "plain", "gpt2")
    calibrated = _config(lm_assets, tmp_path / "cal", "gpt2", calibrate=True)
    build_cache(plain)
    build_cache(calibrated)
    resolved = resolve_causal_lm(plain.teachers[0], _task(lm_assets), plain.prompt)
    content_free = _direct_class_logits(lm_assets["gpt2"], resolved.prompt, "test", ["N/A"], LABELS, chat=False)[0]
    offset = content_free - np.logaddexp.reduce(content_free)
    a = open_cache(plain.out).teacher_outputs("test").logits[:, 0].astype(np.float64)
    b = open_cache(calibrated.out).teacher_outputs("test").logits[:, 0].astype(np.float64)
    np.testing.assert_allclose(a - b, np.broadcast_to(offset, a.shape), atol=3e-2)
    assert load_manifest(calibrated.out).teachers["gpt2"].calibration.startswith("contextual")


def test_changing_the_prompt_or_a_verbalizer_is_refused_naming_the_field(lm_assets, tmp_path):
    out = tmp_path / "c"
    build_cache(_config(lm_assets, out, "gpt2"))
    with pytest.raises(CacheMismatchError, match="verbalizers: cached"):
        build_cache(_config(lm_assets, out, "gpt2", verbalizers=(("tech", "software"),)))
    changed = write_prompt(tmp_path / "other.txt", "Text: {text}\nLabel:")
    config = _config(lm_assets, out, "gpt2")
    with pytest.raises(CacheMismatchError, match="prompt_template: cached"):
        build_cache(BuildConfig(dataset=config.dataset, teachers=config.teachers, out=out, runner=config.runner,
                                shard_rows=8, prompt=PromptConfig(template=changed)))
    with pytest.raises(CacheMismatchError, match="shots: cached"):
        build_cache(_config(lm_assets, out, "gpt2", shots=1))


def test_long_texts_lose_their_end_never_the_answer_cue(lm_assets, tmp_path):
    config = _config(lm_assets, tmp_path / "c", "gpt2")
    config = BuildConfig(dataset=config.dataset, teachers=config.teachers, out=config.out,
                         runner=RunnerConfig(backend="causal-lm", max_length=24), shard_rows=8, prompt=config.prompt)
    build_cache(config)
    teacher = load_manifest(config.out).teachers["gpt2"]
    assert sum(teacher.truncated_rows.values()) > 0
    from mtkd_cache.runners.causal_lm import CausalLMTeacher

    runner = CausalLMTeacher(resolve_causal_lm(config.teachers[0], _task(lm_assets), config.prompt),
                             torch.device("cpu"), torch.float32, 24)
    rows = runner.prepare("test", ["vote " * 100], None, 24)
    prefix = rows.prefixes[rows.groups[0]].tolist()  # the shared prompt start, kept once for every row
    whole = prefix + rows.tokens.ids.tolist()
    text = runner.tokenizer.decode(whole)
    assert len(whole) == 24 and text.startswith("Classify") and text.endswith("Topic :")
    with pytest.raises(ConfigError, match="leaves no room"):
        runner.prepare("test", ["vote"], None, 8)


def test_torch_backend_detects_a_causal_lm_and_asks_for_a_prompt(lm_assets, tmp_path):
    base = _config(lm_assets, tmp_path / "c", "llama")
    with pytest.raises(ConfigError, match="causal language model; give --prompt"):
        build_cache(BuildConfig(dataset=base.dataset, teachers=base.teachers, out=base.out, shard_rows=8))
    build_cache(BuildConfig(dataset=base.dataset, teachers=base.teachers, out=base.out, shard_rows=8,
                            runner=RunnerConfig(max_length=512), prompt=base.prompt))
    assert load_manifest(base.out).teachers["llama"].backend == "causal-lm"


def test_cli_build_and_info_json_show_what_was_scored(lm_assets, tmp_path):
    out = tmp_path / "c"
    result = cli.invoke(app, ["build", "--dataset", str(lm_assets["data"]), "--teacher", f"lm={lm_assets['gpt2']}",
                              "--out", str(out), "--backend", "causal-lm", "--prompt", str(lm_assets["prompt"]),
                              "--verbalizers", SHARED_FIRST_TOKEN, "--shots", "1", "--max-length", "256"])
    assert result.exit_code == 0, result.output
    info = json.loads(cli.invoke(app, ["info", str(out), "--json"]).stdout)
    teacher = info["teachers"][0]
    assert teacher["backend"] == "causal-lm" and teacher["scoring"] == "sequence"
    assert teacher["verbalizers"] == dict(parse_verbalizers(SHARED_FIRST_TOKEN))
    assert len(teacher["prompt_sha256"]) == 64 and teacher["shots"]["count"] == 1
    missing = cli.invoke(app, ["build", "--dataset", str(lm_assets["data"]), "--teacher", f"lm={lm_assets['gpt2']}",
                               "--out", str(tmp_path / "d"), "--backend", "causal-lm"])
    assert missing.exit_code == 2 and "needs --prompt FILE" in missing.output


def test_two_causal_lms_with_one_tokenizer_and_prompt_share_the_prepared_rows(lm_assets, tmp_path, monkeypatch):
    from mtkd_cache.runners.causal_lm import CausalLMTeacher

    other = make_causal_lm(tmp_path / "other", "llama", seed=9)  # the same tokenizer files as lm_assets["llama"]
    prepared = []
    real_prepare = CausalLMTeacher.prepare
    monkeypatch.setattr(CausalLMTeacher, "prepare", lambda self, *a: prepared.append(self.name) or real_prepare(self, *a))
    words = parse_verbalizers(SHARED_FIRST_TOKEN)
    both = _config(lm_assets, tmp_path / "both", "llama", verbalizers=words, calibrate=True)
    both = BuildConfig(dataset=both.dataset, teachers=(*both.teachers, TeacherSpec("other", str(other))), out=both.out,
                       runner=both.runner, shard_rows=8, prompt=both.prompt)
    build_cache(both)
    assert prepared == ["llama"] * 3  # one preparation per split for the group
    alone = BuildConfig(dataset=both.dataset, teachers=(TeacherSpec("other", str(other)),), out=tmp_path / "alone",
                        runner=both.runner, shard_rows=8, prompt=both.prompt)
    build_cache(alone)
    for split in ("train", "validation", "test"):
        shared = open_cache(both.out).teacher_outputs(split, ["other"]).logits
        assert np.array_equal(shared, open_cache(alone.out).teacher_outputs(split).logits)


def test_rows_of_a_shot_set_share_its_prefix_and_a_shot_row_has_its_own(lm_assets):
    from mtkd_cache.runners.causal_lm import NO_PREFIX, CausalLMTeacher

    resolved = resolve_causal_lm(TeacherSpec("gpt2", str(lm_assets["gpt2"])), _task(lm_assets),
                                 PromptConfig(template=lm_assets["prompt"], shots=2))
    runner = CausalLMTeacher(resolved, torch.device("cpu"), torch.float32, 512)
    texts = _task(lm_assets).splits["train"].texts
    rows = runner.prepare("train", texts, None, 512)
    assert (rows.groups != NO_PREFIX).all()
    main = rows.groups[[i for i in range(len(texts)) if i not in {s.sample_id for s in resolved.prompt.shots}][0]]
    assert len(rows.prefixes[main]) > 20  # the instruction and both shots are computed once
    for shot in resolved.prompt.shots[:2]:
        assert rows.groups[shot.sample_id] != main  # its prompt shows the spare instead of itself
