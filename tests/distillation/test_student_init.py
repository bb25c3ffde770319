"""`--student from:SOURCE[,layers=...]`: a student initialised from a teacher's embeddings and chosen layers,
with a fresh head, the source's tokenizer and the source's sha256 in the run's config."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel, BertTokenizer, ElectraConfig, ElectraModel, GPT2Config, GPT2Model, RobertaConfig, RobertaModel
from typer.testing import CliRunner

from helpers.assets import LABELS, VOCAB, make_teacher
from helpers.cli import assert_user_error
from helpers.reference import build_teacherless_cache
from mtkd_cache import ConfigError, open_cache
from mtkd_cache.distillation.students import build_student
from mtkd_cache.layout import RUN_CONFIG
from mtkd_cache_cli.app import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save_encoder(directory, model):
    model.save_pretrained(directory)
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    small = {"vocab_size": len(VOCAB), "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
             "intermediate_size": 48, "max_position_embeddings": 64}
    return {
        "bert": make_teacher(root / "bert", "bert", num_layers=4),
        "distilbert": make_teacher(root / "distilbert", "distilbert", num_layers=4),
        "roberta": _save_encoder(root / "roberta", RobertaModel(RobertaConfig(**small, pad_token_id=0))),
        # ELECTRA-style: a smaller embedding width projected up to the encoder's
        "electra": _save_encoder(root / "electra", ElectraModel(ElectraConfig(**small, embedding_size=16))),
        "gpt2": _save_encoder(root / "gpt2", GPT2Model(GPT2Config(vocab_size=len(VOCAB), n_embd=16, n_layer=2,
                                                                  n_head=2, n_positions=64))),
    }


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta", "electra"])
def test_copied_tensors_equal_the_sources_chosen_layers(sources, arch):
    student, tokenizer, kind = build_student(f"from:{sources[arch]},layers=3,1", LABELS, None)
    teacher = AutoModel.from_pretrained(sources[arch]).state_dict()
    base = student.base_model.state_dict()
    assert kind == "hf" and student.config.id2label == dict(enumerate(LABELS))
    assert len(tokenizer) == len(VOCAB)  # the source's tokenizer
    layer_keys = [k for k in base if ".layer." in k]
    assert layer_keys and {k.split(".layer.")[1].split(".")[0] for k in layer_keys} == {"0", "1"}
    for key, tensor in base.items():
        prefix, sep, rest = key.partition(".layer.")
        if sep:  # student layer 0 is source layer 3, student layer 1 is source layer 1
            index, _, tail = rest.partition(".")
            source_key = f"{prefix}.layer.{ {'0': 3, '1': 1}[index]}.{tail}"
        else:
            source_key = key
        assert torch.equal(tensor, teacher[source_key]), key
    embeddings = [k for k in base if "embeddings" in k]
    assert embeddings, "the embeddings are copied"


def test_default_layers_are_every_other_one(sources):
    student, _, _ = build_student(f"from:{sources['bert']}", LABELS, None)
    teacher = AutoModel.from_pretrained(sources["bert"]).state_dict()
    assert student.config.num_hidden_layers == 2
    copied = student.bert.encoder.layer[1].attention.self.query.weight
    assert torch.equal(copied, teacher["encoder.layer.2.attention.self.query.weight"])


@pytest.mark.parametrize(("spec", "message"), [
    ("from:{bert},layers=0,4", "layer 4 is out of range; the source has 4 layers (0 to 3)"),
    ("from:{bert},layers=-1", "layer -1 is out of range"),
    ("from:{bert},layers=1,1", "lists a layer twice"),
    ("from:{bert},layers=x", "layers must be integers"),
    ("from:{bert},depth=2", "unknown option 'depth=2'"),
    ("from:{gpt2}", "GPT2Model is not a BERT-family encoder"),
    ("from:./no/such/teacher", "is not a save_pretrained directory"),
])
def test_refusals_name_the_cause(sources, spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_student(spec.format(**sources), LABELS, None)


def test_distill_records_the_sources_sha256_and_refusals_exit_2(assets, sources, tmp_path):
    cache = build_teacherless_cache(assets, tmp_path)
    out = tmp_path / "run"
    result = runner.invoke(app, ["distill", str(cache), "--student", f"from:{assets['bert']},layers=1", "--out",
                                 str(out), "--epochs", "1", "--lr", "1e-3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / RUN_CONFIG).read_text())
    # The same digest the cache's manifest gives the teacher built from that directory.
    assert recorded["student_source_sha256"] == open_cache(cache).manifest.teachers["bert"].weights_sha256
    assert recorded["student_source"] == str(assets["bert"]) and recorded["student_kind"] == "hf"
    for spec, fragment in ((f"from:{sources['gpt2']}", "GPT2Model is not a BERT-family encoder"),
                           (f"from:{assets['bert']},layers=0,2", "layer 2 is out of range")):
        refused = tmp_path / "refused"
        result = runner.invoke(app, ["distill", str(cache), "--student", spec, "--out", str(refused), "--device", "cpu"])
        assert_user_error(result, fragment)
        assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
        assert not refused.exists()


def test_a_changed_source_is_another_run(assets, tmp_path):
    import shutil

    cache = build_teacherless_cache(assets, tmp_path)
    source = shutil.copytree(assets["bert"], tmp_path / "source")
    args = ["distill", str(cache), "--student", f"from:{source},layers=1", "--out", str(tmp_path / "run"),
            "--epochs", "1", "--device", "cpu"]
    assert runner.invoke(app, args).exit_code == 0
    make_teacher(source, "bert", seed=11)  # new weights under the same path
    assert_user_error(runner.invoke(app, args), "holds a run with another configuration")
