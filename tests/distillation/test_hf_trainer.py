"""DistillationTrainer: transformers.Trainer on cached targets reaches the project's own loop's step-1 loss on
the same batch, re-draws random targets per epoch, and refuses a dataset that is not a cache's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")  # every transformers.Trainer needs it (the `trainer` extra)

from transformers import TrainingArguments  # noqa: E402

from helpers.assets import LABELS, make_teacher  # noqa: E402
from helpers.reference import build_teacherless_cache  # noqa: E402
from mtkd_cache import CacheDataset, DistillationTrainer, StrategyConfig  # noqa: E402
from mtkd_cache.distillation.runs import DistillConfig, distill  # noqa: E402
from mtkd_cache.distillation.session import PreparedCache  # noqa: E402
from mtkd_cache.distillation.students import build_student, load_tokenizer  # noqa: E402
from mtkd_cache.distillation.training import TrainConfig  # noqa: E402
from mtkd_cache.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TRAIN_ROWS = 60  # the assets' train split: one batch of all of it is step 1 of both loops


@pytest.fixture(scope="module")
def env(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-trainer")
    student = make_teacher(root / "student", "bert", seed=11)
    config = json.loads((student / "config.json").read_text())
    # No dropout: the two loops draw dropout masks from different RNG streams; the loss itself must agree.
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (student / "config.json").write_text(json.dumps(config))
    return {"root": root, "cache": build_teacherless_cache(assets, root), "student": student}


def trainer_args(out: Path, **overrides) -> TrainingArguments:
    settings = dict(output_dir=str(out), per_device_train_batch_size=TRAIN_ROWS, learning_rate=1e-3, max_steps=1,
                    logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
                    warmup_steps=0, seed=0, dataloader_num_workers=0)
    return TrainingArguments(**{**settings, **overrides})


@pytest.mark.parametrize("strategy", ("expert", "camkd"))  # a Combine.LOGITS and a Combine.LOSSES strategy
def test_step_one_loss_equals_the_projects_loop(env, strategy, tmp_path):
    run = distill(DistillConfig(cache=env["cache"], student=str(env["student"]), out=tmp_path / "run",
                                strategy=StrategyConfig(strategy), expert_split="validation", alpha=0.4,
                                temperature=3.0, train=TrainConfig(epochs=1, batch_size=TRAIN_ROWS, device="cpu")))
    ours = run.train.history[0].train_loss  # one step: the epoch's mean loss is step 1's loss

    cache = PreparedCache(env["cache"])
    model, tokenizer, _ = build_student(str(env["student"]), cache.cache.label_names, None)
    dataset = CacheDataset(cache, "train", tokenizer, strategy, expert_split="validation")
    trainer = DistillationTrainer(model=model, args=trainer_args(tmp_path / "hf"), train_dataset=dataset,
                                  alpha=0.4, temperature=3.0)
    trainer.train()
    theirs = trainer.state.log_history[0]["loss"]
    assert theirs == pytest.approx(ours, rel=1e-5)


def test_random_targets_are_redrawn_each_epoch(env, tmp_path):
    cache = PreparedCache(env["cache"])
    model, tokenizer, _ = build_student(str(env["student"]), cache.cache.label_names, None)
    dataset = CacheDataset(cache, "train", tokenizer, "random", expert_split="validation", seed=2)
    drawn = []
    original = dataset.set_epoch

    def record(epoch: int) -> None:
        original(epoch)
        drawn.append(epoch)

    dataset.set_epoch = record
    trainer = DistillationTrainer(model=model, args=trainer_args(tmp_path, max_steps=-1, num_train_epochs=3,
                                                                 per_device_train_batch_size=30),
                                  train_dataset=dataset)
    trainer.train()
    assert sorted(set(drawn)) == [0, 1, 2] and dataset.epoch == 2
    expected = cache.signal(StrategyConfig("random"), dataset.teachers, "train", "validation", 2, 2)
    assert torch.equal(dataset.signal.weights, expected.weights)


def test_refuses_a_dataset_that_is_not_a_cache_split(env, tmp_path):
    model, _, _ = build_student(str(env["student"]), LABELS, None)
    with pytest.raises(ConfigError, match="needs train_dataset=CacheDataset"):
        DistillationTrainer(model=model, args=trainer_args(tmp_path), train_dataset=[{"input_ids": [1]}])
    dataset = CacheDataset(env["cache"], "train", load_tokenizer(str(env["student"])))
    with pytest.raises(ConfigError, match="temperature must be positive"):
        DistillationTrainer(model=model, args=trainer_args(tmp_path), train_dataset=dataset, temperature=0)
