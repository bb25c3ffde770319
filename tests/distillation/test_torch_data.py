"""The drop-in Dataset: its targets are `select`'s for every strategy, re-drawn per epoch for random/noisy,
and a shuffled DataLoader keeps every row's targets with its sample id."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import mtkd_cache
from helpers.reference import build_teacherless_cache
from mtkd_cache import CacheDataset, StrategyConfig, cached_distillation_loss, open_cache, select_teachers, student_inputs
from mtkd_cache.distillation.losses import distillation_loss
from mtkd_cache.distillation.session import PreparedCache
from mtkd_cache.distillation.students import load_tokenizer
from mtkd_cache.errors import ConfigError

ALL_STRATEGIES = ("expert", "average", "random", "best", "camkd", "mtbert", "noisy", "expert-soft")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def env(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("torch-data")
    return {"cache": build_teacherless_cache(assets, root), "tokenizer": load_tokenizer(str(assets["bert"]))}


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_targets_equal_select_for_every_strategy(env, strategy):
    dataset = CacheDataset(env["cache"], "train", env["tokenizer"], strategy, expert_split="validation", seed=3)
    selection = select_teachers(env["cache"], "train", StrategyConfig(strategy), expert_split="validation", seed=3)
    cache = open_cache(env["cache"])
    cached = cache.teacher_outputs("train").logits.astype(np.float32)
    weights = np.stack([dataset[i]["teacher_weights"].numpy() for i in range(len(dataset))])
    logits = np.stack([dataset[i]["teacher_logits"].numpy() for i in range(len(dataset))])
    np.testing.assert_array_equal([dataset[i]["sample_ids"] for i in range(len(dataset))], selection.sample_ids)
    np.testing.assert_allclose(weights, selection.weights, rtol=0, atol=1e-7)
    if strategy == "noisy":  # the noise is added to the logits of M: not the cached values, but near them
        assert not np.allclose(logits, cached)
        assert np.abs(logits - cached).max() < 10
    else:
        np.testing.assert_array_equal(logits, cached)
    np.testing.assert_array_equal([dataset[i]["labels"] for i in range(len(dataset))], cache.inputs("train").labels)


@pytest.mark.parametrize("strategy", ("random", "noisy"))
def test_stochastic_targets_are_redrawn_per_epoch_like_distill(env, strategy):
    prepared = PreparedCache(env["cache"])
    dataset = CacheDataset(prepared, "train", env["tokenizer"], strategy, expert_split="validation", seed=5)
    epoch0 = torch.stack([dataset[i]["teacher_logits"] * dataset[i]["teacher_weights"][:, None]
                          for i in range(len(dataset))])
    dataset.set_epoch(1)
    epoch1 = torch.stack([dataset[i]["teacher_logits"] * dataset[i]["teacher_weights"][:, None]
                          for i in range(len(dataset))])
    assert not torch.equal(epoch0, epoch1)
    expected = prepared.signal(StrategyConfig(strategy), dataset.teachers, "train", "validation", 5, 1)
    assert torch.equal(dataset.signal.weights, expected.weights) and torch.equal(dataset.signal.logits, expected.logits)
    dataset.set_epoch(0)
    again = torch.stack([dataset[i]["teacher_logits"] * dataset[i]["teacher_weights"][:, None]
                         for i in range(len(dataset))])
    assert torch.equal(again, epoch0)  # an epoch's draw depends on (seed, epoch) alone


def test_shuffled_loader_keeps_targets_aligned_by_sample_id(env):
    dataset = CacheDataset(env["cache"], "train", env["tokenizer"], "camkd", expert_split="validation")
    cache = open_cache(env["cache"])
    inputs = cache.inputs("train")
    row_of = {int(s): row for row, s in enumerate(inputs.sample_ids)}
    cached = cache.teacher_outputs("train").logits.astype(np.float32)
    selection = select_teachers(env["cache"], "train", StrategyConfig("camkd"), expert_split="validation")
    loader = DataLoader(dataset, batch_size=7, shuffle=True, collate_fn=dataset.collate,
                        generator=torch.Generator().manual_seed(1))
    seen, positions = [], []
    for batch in loader:
        rows = [row_of[int(s)] for s in batch["sample_ids"]]
        positions += rows
        np.testing.assert_array_equal(batch["teacher_logits"].numpy(), cached[rows])
        np.testing.assert_allclose(batch["teacher_weights"].numpy(), selection.weights[rows], atol=1e-7)
        np.testing.assert_array_equal(batch["labels"].numpy(), inputs.labels[rows])
        for b, row in enumerate(rows):  # the token ids are this row's text, right-padded with the pad id
            expected = env["tokenizer"](inputs.texts[row], truncation=True, max_length=128)["input_ids"]
            length = int(batch["attention_mask"][b].sum())
            assert batch["input_ids"][b, :length].tolist() == expected
            assert set(batch["input_ids"][b, length:].tolist()) <= {env["tokenizer"].pad_token_id}
        seen += batch["sample_ids"].tolist()
    assert sorted(seen) == sorted(row_of) and positions != sorted(positions)  # every row once, shuffled


def test_loss_is_the_projects_loss_on_the_batch(env):
    dataset = CacheDataset(env["cache"], "train", env["tokenizer"], "mtbert", expert_split="validation")
    batch = dataset.collate([dataset[i] for i in range(5)])
    assert set(student_inputs(batch)) == {"input_ids", "attention_mask", "token_type_ids"}
    student_logits = torch.randn(5, len(dataset.label_names), generator=torch.Generator().manual_seed(0))
    loss = cached_distillation_loss(student_logits, batch, dataset.combine, alpha=0.3, temperature=3.0)
    signal = dataset.signal
    expected = distillation_loss(student_logits, signal.logits[:5], signal.weights[:5], signal.combine,
                                 torch.from_numpy(dataset.labels[:5]), 0.3, 3.0)
    assert torch.equal(loss, expected)


def test_user_errors_name_the_cause(env):
    with pytest.raises(ConfigError, match="split 'dev' is not in the cache; it has"):
        CacheDataset(env["cache"], "dev", env["tokenizer"])
    with pytest.raises(ConfigError, match="--teachers"):
        CacheDataset(env["cache"], "train", env["tokenizer"], teachers="nope")
    with pytest.raises(ConfigError, match="--strategy"):
        CacheDataset(env["cache"], "train", env["tokenizer"], "experts")
    dataset = CacheDataset(env["cache"], "train", env["tokenizer"], teachers="bert")
    batch = dataset.collate([dataset[0]])
    assert batch["teacher_logits"].shape == (1, 1, len(dataset.label_names))
    with pytest.raises(ConfigError, match="alpha must be between 0 and 1"):
        cached_distillation_loss(torch.zeros(1, 3), batch, dataset.combine, alpha=2.0)


def test_the_names_load_lazily_from_the_package():
    assert mtkd_cache.CacheDataset is CacheDataset
    assert "DistillationTrainer" in mtkd_cache.__all__
