"""augment: seeded word-level operations and masked-LM filling, the split file it writes, and `build` reading it."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from helpers.assets import VOCAB, make_rows, write_csv, write_dataset
from mtkd_cache import BuildConfig, ConfigError, DatasetSpec, TeacherSpec, build_cache, load_task_data, open_cache
from mtkd_cache.data.augment import (
    DEFAULT_OPS,
    AugmentConfig,
    augment_split,
    check_output,
    load_masked_lm,
    parse_ops,
    write_split,
)
from mtkd_cache_cli.app import app

runner = CliRunner()
TEXTS = [row["text"] for row in make_rows(30, seed=5)] + ["", "  Odd\tspacing  kept \n", "one"]
WORD_OPS = ("mask", "replace", "delete", "swap")


def _ops(p: float, names=WORD_OPS) -> tuple[tuple[str, float], ...]:
    return tuple((name, p) for name in names)


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
    """A tiny random-init BertForMaskedLM over the fixture vocabulary, with its tokenizer."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    directory = tmp_path_factory.mktemp("mlm")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=128)
    BertForMaskedLM(config).save_pretrained(directory)
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True).save_pretrained(directory)
    return directory


def test_same_seed_same_rows_other_seed_other_rows():
    first = augment_split(TEXTS, None, AugmentConfig(ops=_ops(0.3), copies=2, seed=7))
    assert first == augment_split(TEXTS, None, AugmentConfig(ops=_ops(0.3), copies=2, seed=7))
    assert first.texts != augment_split(TEXTS, None, AugmentConfig(ops=_ops(0.3), copies=2, seed=8)).texts


def test_a_row_does_not_depend_on_the_other_rows():
    config = AugmentConfig(ops=_ops(0.3), seed=3, vocabulary=tuple(VOCAB))  # the default one is the split's words
    alone = augment_split(TEXTS[:5], None, config)
    assert augment_split(TEXTS, None, config).texts[:len(alone)] == alone.texts


def test_every_row_maps_to_its_source_and_changes_only_drawn_words():
    rows = augment_split(TEXTS, None, AugmentConfig(ops=_ops(0.4), copies=3, seed=1))
    assert len(rows) == len(TEXTS) * len(WORD_OPS) * 3
    assert rows.source_rows == [r for r in range(len(TEXTS)) for _ in WORD_OPS for _ in range(3)]
    assert rows.augmentations == [op for _ in TEXTS for op in WORD_OPS for _ in range(3)]
    vocabulary = {w for t in TEXTS for w in t.split()}
    changed = Counter()
    for text, row, op in zip(rows.texts, rows.source_rows, rows.augmentations):
        source, words = TEXTS[row].split(), text.split()
        if op in ("mask", "replace"):
            assert len(words) == len(source)
            for new, old in zip(words, source):
                if new != old:
                    changed[op] += 1
                    assert new == "[MASK]" if op == "mask" else new in vocabulary
        elif op == "swap":
            assert sorted(words) == sorted(source)
        else:  # delete keeps an ordered subsequence of the words
            remaining = iter(source)
            assert all(word in remaining for word in words)
    assert changed["mask"] > 0 and changed["replace"] > 0


@pytest.mark.parametrize("names", [WORD_OPS, ("mlm",)])
def test_p_zero_gives_the_source(names, mlm_dir):
    pairs = [t[::-1] for t in TEXTS]
    config = AugmentConfig(ops=_ops(0.0, names), copies=2, mlm=mlm_dir if "mlm" in names else None, device="cpu")
    rows = augment_split(TEXTS, pairs, config)
    assert rows.texts == [TEXTS[r] for r in rows.source_rows]
    assert rows.text_pairs == [pairs[r] for r in rows.source_rows]


def test_delete_never_leaves_an_empty_text():
    rows = augment_split(TEXTS, None, AugmentConfig(ops=(("delete", 1.0),), copies=3))
    for text, row in zip(rows.texts, rows.source_rows):
        if TEXTS[row].split():
            assert len(text.split()) == 1 and text.split()[0] in TEXTS[row].split()
        else:
            assert text == TEXTS[row]


def test_swap_keeps_the_words_and_moves_them():
    long = " ".join(VOCAB[5:25])
    rows = augment_split([long], None, AugmentConfig(ops=(("swap", 0.5),), copies=4))
    assert all(sorted(t.split()) == sorted(long.split()) for t in rows.texts)
    assert any(t != long for t in rows.texts)


def test_replace_draws_a_different_word_from_the_given_vocabulary():
    rows = augment_split(["a b c a"], None, AugmentConfig(ops=(("replace", 1.0),), copies=5, vocabulary=("a", "z")))
    for text in rows.texts:
        assert text.split()[0] == "z" and text.split()[3] == "z" and set(text.split()[1:3]) <= {"a", "z"}


def test_pairs_are_augmented_on_both_sides():
    rows = augment_split(["a b"], ["c d e"], AugmentConfig(ops=(("mask", 1.0),), placeholder="<unk>"))
    assert (rows.texts, rows.text_pairs) == (["<unk> <unk>"], ["<unk> <unk> <unk>"])


def test_mlm_fills_only_chosen_single_token_words_deterministically(mlm_dir):
    texts = ["the vote was held in parliament and the team", "Goal zebra-crossing score", "unknownword"]
    config = AugmentConfig(ops=(("mlm", 1.0),), copies=2, seed=4, mlm=mlm_dir, device="cpu", batch_size=2)
    rows = augment_split(texts, None, config)
    assert rows == augment_split(texts, None, config)
    fillable = set(VOCAB[5:])
    for text, row in zip(rows.texts, rows.source_rows):
        source, words = texts[row].split(), text.split()
        assert len(words) == len(source)
        for new, old in zip(words, source):
            if old.lower() in fillable:  # p = 1: every one-token word is masked, and never refilled with itself
                assert new != old.lower() and new in fillable
            else:
                assert new == old
    half = augment_split(texts, None, AugmentConfig(ops=(("mlm", 0.5),), copies=4, mlm=mlm_dir, device="cpu"))
    kept = sum(new == old for t, r in zip(half.texts, half.source_rows) for new, old in zip(t.split(), texts[r].split()))
    assert 0 < kept < sum(len(texts[r].split()) for r in half.source_rows)


def test_mlm_masks_past_max_length_keep_their_word(mlm_dir):
    text = "the vote was held in parliament"
    rows = augment_split([text], None, AugmentConfig(ops=(("mlm", 1.0),), mlm=mlm_dir, device="cpu", max_length=5))
    assert rows.texts[0].split()[3:] == text.split()[3:]  # [CLS] + 3 words + [SEP]
    assert all(new != old for new, old in zip(rows.texts[0].split()[:3], text.split()[:3]))


def test_mlm_refuses_a_checkpoint_without_a_masked_lm_head(assets, tmp_path):
    with pytest.raises(ConfigError, match="no masked-language-model head"):
        load_masked_lm(AugmentConfig(ops=(("mlm", 0.1),), mlm=assets["bert"], device="cpu"))
    with pytest.raises(ConfigError, match="no config.json"):
        load_masked_lm(AugmentConfig(ops=(("mlm", 0.1),), mlm=tmp_path, device="cpu"))


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"ops": (("mask", 1.5),)}, "between 0 and 1"),
    ({"ops": (("mask", -0.1),)}, "between 0 and 1"),
    ({"ops": (("shuffle", 0.1),)}, "unknown operation 'shuffle'"),
    ({"ops": (("mask", 0.1), ("mask", 0.2))}, "twice"),
    ({"ops": (("mlm", 0.1),)}, "needs --mlm"),
    ({"ops": ()}, "no operation"),
    ({"copies": 0}, "--copies"),
    ({"placeholder": "two words"}, "--placeholder"),
])
def test_config_errors_name_the_option(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        AugmentConfig(**kwargs)


def test_parse_ops():
    assert parse_ops("mask=0.1, swap=0.05") == (("mask", 0.1), ("swap", 0.05))
    for bad in ("mask", "mask=x"):
        with pytest.raises(ConfigError, match="OPERATION=P"):
            parse_ops(bad)


@pytest.mark.parametrize("extension", ["csv", "tsv", "jsonl", "parquet"])
def test_written_split_loads_unlabeled_beside_labeled_splits(tmp_path, extension):
    texts = ["plain", 'comma, "quotes"', "new\nline", "ünïcode ✓", "  spaces  "]
    rows = augment_split(texts, None, AugmentConfig(ops=(("mask", 0.0),)))
    if extension == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": ["a vote"], "label": ["politics"]}), tmp_path / "train.parquet")
    else:
        lines = {"csv": "text,label\na vote,politics\n", "tsv": "text\tlabel\na vote\tpolitics\n",
                 "jsonl": json.dumps({"text": "a vote", "label": "politics"}) + "\n"}
        (tmp_path / f"train.{extension}").write_text(lines[extension])
    write_split(tmp_path / f"transfer.{extension}", rows, "train")
    task = load_task_data(DatasetSpec(str(tmp_path)))
    assert list(task.splits) == ["train", "transfer"]
    assert task.splits["transfer"].texts == texts and task.splits["transfer"].labels.tolist() == [-1] * len(texts)
    assert not list(tmp_path.glob(".tmp-*"))  # the temporary was renamed, not left behind


def test_check_output_refuses_before_any_work(tmp_path):
    write_csv(tmp_path / "train.csv", [{"text": "a", "label": "x"}])
    with pytest.raises(ConfigError, match="exists; pass --overwrite"):
        check_output(tmp_path / "train.csv", overwrite=False)
    with pytest.raises(ConfigError, match="unknown file type '.txt'"):
        check_output(tmp_path / "transfer.txt", overwrite=False)
    with pytest.raises(ConfigError, match="write transfer.csv instead"):
        check_output(tmp_path / "transfer.parquet", overwrite=False)
    check_output(tmp_path / "transfer.csv", overwrite=False)


def test_build_caches_the_transfer_split_unlabeled(tmp_path, assets):
    data = write_dataset(tmp_path / "data", sizes=(("train", 12), ("validation", 4), ("test", 4)))
    texts = load_task_data(DatasetSpec(str(data), splits=("train",))).splits["train"].texts
    write_split(data / "transfer.csv", augment_split(texts, None, AugmentConfig(ops=DEFAULT_OPS, seed=2)), "train")
    out = tmp_path / "cache"
    build_cache(BuildConfig(dataset=DatasetSpec(str(data)), teachers=(TeacherSpec("bert", str(assets["bert"])),),
                            out=out))
    cache = open_cache(out)
    assert list(cache.manifest.splits) == ["train", "validation", "test", "transfer"]
    assert cache.manifest.splits["transfer"].labeled is False
    inputs = cache.inputs("transfer")
    assert len(inputs.texts) == 12 * len(DEFAULT_OPS) and inputs.labels.tolist() == [-1] * len(inputs.texts)
    assert cache.teacher_outputs("transfer").logits.shape == (len(inputs.texts), 1, 3)
    assert cache.inputs("train").labels.min() >= 0


def test_cli_writes_the_split_and_build_reads_it(tmp_path, assets, mlm_dir):
    data = write_dataset(tmp_path / "data", sizes=(("train", 10), ("test", 4)))
    out = data / "transfer.csv"
    arguments = ["augment", str(data), "--out", str(out), "--copies", "2", "--seed", "3", "--mlm", str(mlm_dir),
                 "--device", "cpu"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "wrote 100 rows from 10 'train' rows" in result.stdout  # 10 rows x 5 ops x 2 copies
    first = out.read_bytes()
    assert runner.invoke(app, [*arguments, "--overwrite"]).exit_code == 0 and out.read_bytes() == first
    header = first.decode().splitlines()[0]
    assert header == "text,source_split,source_row,augmentation"
    result = runner.invoke(app, ["build", "--dataset", str(data), "--teacher", f"bert={assets['bert']}",
                                 "--out", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    info = json.loads(runner.invoke(app, ["info", str(tmp_path / "cache"), "--json"]).stdout)
    assert {s["name"]: (s["rows"], s["labeled"]) for s in info["splits"]}["transfer"] == (100, False)


def test_cli_help_documents_the_options():
    result = runner.invoke(app, ["augment", "--help"], terminal_width=200)
    for option in ("--out", "--dataset", "--split", "--ops", "--copies", "--seed", "--mlm", "--placeholder",
                   "--vocabulary", "--overwrite", "--text-column", "--text-pair-column"):
        assert option in result.stdout


@pytest.mark.parametrize(("extra", "fragments"), [
    (["--out", "{data}/train.csv"], ["exists; pass --overwrite"]),
    (["--out", "{tmp}/t.txt"], ["unknown file type '.txt'"]),
    (["--out", "{data}/transfer.parquet"], ["reads one format per directory"]),
    (["--ops", "mask=1.5"], ["mask=1.5 is not a probability"]),
    (["--ops", "shuffle=0.1"], ["unknown operation 'shuffle'"]),
    (["--split", "dev"], ["split 'dev' not found"]),
    (["--text-column", "body"], ["no column 'body'"]),
    (["--mlm", "{bert}"], ["no masked-language-model head"]),
    (["--dataset", "{data}"], ["give the dataset once"]),
])
def test_cli_user_errors_are_one_line_exit_2(tmp_path, assets, extra, fragments):
    data = write_dataset(tmp_path / "data", sizes=(("train", 4),))
    fill = {"data": data, "tmp": tmp_path, "bert": assets["bert"]}
    arguments = ["augment", str(data), "--out", str(tmp_path / "t.csv"), *(e.format(**fill) for e in extra)]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert all(fragment in " ".join(result.stderr.split()) for fragment in fragments), result.stderr
    assert not (tmp_path / "t.csv").exists()


def test_cli_refuses_a_missing_dataset_path(tmp_path):
    result = runner.invoke(app, ["augment", str(tmp_path / "nope"), "--out", str(tmp_path / "t.csv")])
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_an_out_that_is_a_directory_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "transfer.csv").mkdir()  # a directory with a split file's name
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="is a directory; give a file name"):
            check_output(tmp_path / "transfer.csv", overwrite)
