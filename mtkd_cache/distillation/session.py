"""A cache read once per process, and what distillation runs derive from it, each computed once.

`distill` prepares one for a single run; `sweep` shares one across every run of its grid, so:
- every shard is read and verified once, the logits of a split once per teacher (only the teachers asked for);
- a split is tokenized once per (tokenizer, max length), and the token ids are kept on disk under
  CACHE/student-inputs/ keyed by the tokenizer's identity, so the next process skips tokenization too;
- the targets of a deterministic strategy are computed once per (strategy, teacher subset, split);
  `random` and `noisy` are drawn per (seed, epoch) and are cheap.
Invariant: what a run gets from here is the same whether it shares it or not, so a run inside a sweep
trains exactly like the same run alone.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import torch

from mtkd_cache.atomic import write_atomically
from mtkd_cache.cache.reader import Cache, SplitInputs, open_cache
from mtkd_cache.data.batching import TokenizedRows, tokenize_rows
from mtkd_cache.distillation.experts import ExpertTable, expert_table_for, for_strategy
from mtkd_cache.distillation.strategies import STOCHASTIC, ExpertTensors, StrategyConfig, TeacherSignal, select
from mtkd_cache.errors import CacheWriteError
from mtkd_cache.hashing import sha256_bytes, sha256_files
from mtkd_cache.layout import STUDENT_INPUTS_DIR


class PreparedCache:
    def __init__(self, cache: Cache | Path):
        self.cache: Cache = cache if isinstance(cache, Cache) else open_cache(cache)
        self._inputs: dict[str, SplitInputs] = {}
        self._logits: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}  # (split, teacher)
        self._tables: dict[tuple, ExpertTable] = {}
        self._tokens: dict[tuple, TokenizedRows] = {}
        self._signals: dict[tuple, TeacherSignal] = {}
        self._last_tokenizer: tuple[object, str] = (None, "")

    def inputs(self, split: str) -> SplitInputs:
        if split not in self._inputs:
            self._inputs[split] = self.cache.inputs(split)
        return self._inputs[split]

    def teacher_tensors(self, split: str, teachers: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 logits [S, N, K] and predictions [S, N] of `teachers`, in their order.

        Only the teachers asked for are read (those not read yet, in one call): a teacher that an interrupted
        build left incomplete blocks only the runs that name it."""
        missing = [t for t in dict.fromkeys(teachers) if (split, t) not in self._logits]
        if missing:
            outputs = self.cache.teacher_outputs(split, missing)
            logits = torch.from_numpy(outputs.logits.astype(np.float32))
            preds = torch.from_numpy(outputs.preds)
            for n, teacher in enumerate(missing):
                self._logits[(split, teacher)] = (logits[:, n], preds[:, n])
        columns = [self._logits[(split, t)] for t in teachers]
        return torch.stack([c[0] for c in columns], dim=1), torch.stack([c[1] for c in columns], dim=1)

    def expert_table(self, split: str, teachers: tuple[str, ...]) -> ExpertTable:
        key = (split, teachers)
        if key not in self._tables:
            _, preds = self.teacher_tensors(split, teachers)
            self._tables[key] = expert_table_for(self.cache, split, teachers, preds.numpy(), self.inputs(split).labels)
        return self._tables[key]

    def strategy_table(self, strategy: StrategyConfig, split: str, teachers: tuple[str, ...]) -> ExpertTable:
        """The expert table as `strategy` uses it (its confidence rule; with `calibrate`, the teachers'
        temperatures fitted on the same split), computed once per process."""
        key = (split, teachers, strategy.expert_confidence, strategy.calibrate)
        if key not in self._tables:
            self._tables[key] = for_strategy(self.expert_table(split, teachers), strategy,
                                             lambda: self.teacher_tensors(split, teachers)[0].numpy(),
                                             self.inputs(split).labels, self.cache)
        return self._tables[key]

    def signal(self, strategy: StrategyConfig, teachers: tuple[str, ...], split: str, expert_split: str,
               seed: int, epoch: int) -> TeacherSignal:
        """The strategy's per-sample targets on `split`; deterministic strategies ignore seed and epoch."""
        stochastic = strategy.name in STOCHASTIC
        key = (strategy, teachers, split, expert_split)
        if not stochastic and key in self._signals:
            return self._signals[key]
        logits, preds = self.teacher_tensors(split, teachers)
        labels = torch.from_numpy(self.inputs(split).labels)
        generator = torch.Generator().manual_seed(seed * 7919 + epoch)
        table = self.strategy_table(strategy, expert_split, teachers)
        if strategy.calibrate:
            logits = logits / torch.from_numpy(table.temperatures).float()[None, :, None]
        signal = select(strategy, logits, preds, labels, expert_tensors(table), generator)
        if not stochastic:
            self._signals[key] = signal
        return signal

    def tokens(self, tokenizer, max_length: int, split: str) -> TokenizedRows:
        if self._last_tokenizer[0] is not tokenizer:  # a run asks for several splits with one tokenizer
            self._last_tokenizer = (tokenizer, tokenizer_identity(tokenizer))
        key = (self._last_tokenizer[1], max_length, split)
        if key in self._tokens:
            return self._tokens[key]
        name = sha256_bytes(f"{key}{self.cache.manifest.dataset.fingerprint}".encode())[:24]
        path = self.cache.path / STUDENT_INPUTS_DIR / f"{split}-{name}.npz"
        rows = len(self.inputs(split).labels)
        tokens = _load_tokens(path, rows)
        if tokens is None:
            inputs = self.inputs(split)
            tokens = tokenize_rows(tokenizer, inputs.texts, inputs.text_pairs, max_length)
            _save_tokens(path, tokens)
        self._tokens[key] = tokens
        return tokens


def expert_tensors(table: ExpertTable) -> ExpertTensors:
    return ExpertTensors(experts=torch.from_numpy(table.experts), fallback=table.fallback,
                         per_class_accuracy=torch.from_numpy(np.nan_to_num(table.per_class_accuracy, nan=0.0)).float())


def tokenizer_identity(tokenizer) -> str:
    """A hash of the files `save_pretrained` writes: two tokenizers with equal files tokenize alike."""
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save_pretrained(directory)
        files = [p.name for p in Path(directory).iterdir() if p.is_file() and p.name != "tokenizer_config.json"]
        # tokenizer_config.json records where the tokenizer was loaded from; its other fields are settings.
        config = Path(directory) / "tokenizer_config.json"
        settings = _without_path(config.read_text()) if config.exists() else ""
        return sha256_bytes((sha256_files(Path(directory), files) + settings).encode())


def _without_path(config_text: str) -> str:
    import json

    config = json.loads(config_text)
    config.pop("name_or_path", None)
    return json.dumps(config, sort_keys=True)


def _load_tokens(path: Path, rows: int) -> TokenizedRows | None:
    """The saved token ids, or None when absent or unreadable (then they are simply recomputed)."""
    try:
        with np.load(path) as saved:
            tokens = TokenizedRows(ids=saved["ids"], type_ids=saved["type_ids"] if "type_ids" in saved else None,
                                   offsets=saved["offsets"], truncated_rows=int(saved["truncated_rows"]))
    except Exception:  # a derived file: whatever is wrong with it, recomputing is the fix
        return None
    valid = len(tokens.offsets) == rows + 1 and tokens.offsets[-1] == len(tokens.ids) and np.all(tokens.lengths >= 0)
    return tokens if valid else None


def _save_tokens(path: Path, tokens: TokenizedRows) -> None:
    arrays = {"ids": tokens.ids, "offsets": tokens.offsets, "truncated_rows": np.int64(tokens.truncated_rows)}
    if tokens.type_ids is not None:
        arrays["type_ids"] = tokens.type_ids
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        # A derived file, recomputed when lost: no fsync.
        write_atomically(path, buffer.getvalue(), durable=False)
    except CacheWriteError:
        pass  # a read-only shared cache or a full disk: the tokens stay in memory for this process only
