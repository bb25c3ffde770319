"""DistillationTrainer under torchrun (2 CPU processes, gloo): the Trainer's DDP splits each global batch over
the ranks, and the step-1 loss it logs equals the one-process loss on the same batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from helpers.assets import make_teacher
from helpers.reference import build_teacherless_cache

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # accelerate's CPU path expects the group to exist
        torch.distributed.init_process_group("gloo")
    from transformers import TrainingArguments
    import mtkd_cache as mc
    from mtkd_cache.distillation.students import build_student

    cache, student, out, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    opened = mc.open_cache(cache)
    model, tokenizer, _ = build_student(student, opened.label_names, None)
    train = mc.CacheDataset(cache, "train", tokenizer, "camkd", expert_split="validation")
    args = TrainingArguments(out, per_device_train_batch_size=batch, max_steps=1, logging_steps=1, save_strategy="no",
                             report_to="none", use_cpu=True, disable_tqdm=True, seed=0)
    trainer = mc.DistillationTrainer(model=model, args=args, train_dataset=train, alpha=0.4, temperature=3.0)
    trainer.train()
    if trainer.is_world_process_zero():
        with open(out + "/loss.json", "w") as handle:
            json.dump({"loss": trainer.state.log_history[0]["loss"], "world": trainer.args.world_size}, handle)
""")


def test_two_ranks_log_the_one_process_step_one_loss(assets, tmp_path):
    pytest.importorskip("accelerate")
    cache = build_teacherless_cache(assets, tmp_path)
    student = make_teacher(tmp_path / "student", "bert", seed=11)
    config = json.loads((student / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (student / "config.json").write_text(json.dumps(config))
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
                       TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join(sys.path))
    results = {}
    for name, launcher in (("two", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    "--nproc-per-node", "2"]), ("one", [sys.executable])):
        out = tmp_path / name
        out.mkdir()
        batch = "30" if name == "two" else "60"  # the same global batch: the whole 60-row train split
        process = subprocess.run([*launcher, str(script), str(cache), str(student), str(out), batch],
                                 env=environment, capture_output=True, text=True, timeout=400)
        assert process.returncode == 0, process.stderr[-3000:]
        results[name] = json.loads((out / "loss.json").read_text())
    assert (results["two"]["world"], results["one"]["world"]) == (2, 1)
    assert results["two"]["loss"] == pytest.approx(results["one"]["loss"], rel=1e-5)
