"""The causal-LM backend: a zero- or few-shot language model as a teacher (`--backend causal-lm`).

Class logit c = log P(verbalizer_c | prompt), read from an `AutoModelForCausalLM` checkpoint:
  first-token  one forward pass over the prompt; the next-token log-softmax at its last position gives all
               K (the verbalizers' first tokens are distinct).
  sequence     the same pass with `use_cache`, then the K continuations at once: the prompt's KV cache is
               repeated K times and each verbalizer's remaining tokens run against it in one batch; the
               class logit is the sum of its tokens' log-probabilities.
Optional contextual calibration subtracts the class log-probabilities (normalized over the K classes) of
the content-free input 'N/A' in the same prompt: a constant per class, recorded as such.

The prompt's start shared by every row of a shot set (instruction and shots, up to the text) runs once;
its KV cache, repeated per row, is what each batch continues, so only a row's own tokens are computed.
Prompts are left-padded, with explicit position ids (a padded row's positions start at 0 where its tokens
start), so a row's logits do not depend on the rows batched with it. Only the last position's logits are
computed (`logits_to_keep=1`): a vocabulary-sized row per text, never per token.
"""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtkd_cache._faults import fault_point
from mtkd_cache.data.batching import TokenizedRows, pad_rows, token_budget_batches
from mtkd_cache.errors import ConfigError, TeacherError
from mtkd_cache.hashing import sha256_files
from mtkd_cache.progress import ProgressEvents
from mtkd_cache.runners.prompts import (
    CONTENT_FREE_TEXT,
    PAIR_SLOT,
    Prompt,
    PromptConfig,
    Scoring,
    continuation_ids,
    load_prompt,
)
from mtkd_cache.runners.teachers import ResolvedTeacher, TeacherSpec, checkpoint_files, local_files
from mtkd_cache.runners.torch_runner import _load_problem, load_teacher_model

_TOKENIZE_CHUNK = 1024
NO_PREFIX = -1  # a row that does not start with its shot set's prefix tokens runs whole


@dataclass
class PromptRows:
    """A split's prompts: per row the tokens after its shot set's shared prefix (`groups[row]` indexes
    `prefixes`), or its whole prompt where the group is NO_PREFIX."""

    tokens: TokenizedRows
    groups: np.ndarray  # int64 [rows]
    prefixes: list[np.ndarray]  # int64 token ids, one per shot set

    @property
    def truncated_rows(self) -> int:
        return self.tokens.truncated_rows


def is_causal_lm_checkpoint(directory: Path) -> bool:
    """True when a checkpoint's config names only *ForCausalLM architectures (detection for --backend torch)."""
    path = directory / "config.json"
    if not path.is_file():
        return False
    try:
        architectures = json.loads(path.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return False
    return bool(architectures) and all(str(a).endswith("ForCausalLM") for a in architectures)


def resolve_causal_lm(spec: TeacherSpec, task, prompt_config: PromptConfig, directory: Path | None = None,
                      revision: str | None = None) -> ResolvedTeacher:
    """A causal-LM teacher's files, identity, prompt and scoring mode (the tokenizer is loaded; the model not)."""
    if directory is None:
        directory, revision = local_files(spec)
    if spec.label_map:
        raise ConfigError(f"teacher '{spec.name}': a causal-LM teacher is scored on the dataset's labels through "
                          "--verbalizers; drop its --label-map.")
    _, weights, tokenizer_files = checkpoint_files(spec.name, directory)
    tokenizer = load_tokenizer(spec.name, directory)
    has_pairs = any(split.text_pairs is not None for split in task.splits.values())
    prompt = load_prompt(prompt_config, task.label_names, task.splits, has_pairs, "causal-lm", tokenizer)
    suffix = prompt.pieces(prompt.shots_for("", None), has_pairs).suffix
    continuations = continuation_ids(tokenizer, suffix, prompt.verbalizers)
    scoring = resolve_scoring(spec.name, prompt_config.scoring, continuations, prompt.verbalizers)
    labels = tuple(task.label_names)
    return ResolvedTeacher(
        spec=spec, directory=directory, revision=revision,
        weights_sha256=sha256_files(directory, ["config.json", *weights]),
        tokenizer_sha256=sha256_files(directory, tokenizer_files),
        model_label_names=labels, label_mapping=tuple(range(len(labels))),
        backend="causal-lm", prompt=prompt, scoring=scoring.value,
    )


def load_tokenizer(name: str, directory: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, KeyError) as error:
        raise TeacherError(f"teacher '{name}': cannot load the tokenizer in {directory} ({_load_problem(error)}).") from error
    if not tokenizer.is_fast:
        raise TeacherError(f"teacher '{name}': the causal-LM backend needs a fast tokenizer (tokenizer.json) to cut "
                           "long texts without cutting the prompt; save one with the model.")
    return tokenizer


def resolve_scoring(name: str, asked: Scoring, continuations: list[list[int]], words: tuple[str, ...]) -> Scoring:
    """first-token when the verbalizers' first tokens are distinct (asked or auto), else sequence."""
    as_tuples = [tuple(ids) for ids in continuations]
    if len(set(as_tuples)) < len(as_tuples):
        same = [w for w, ids in zip(words, as_tuples) if as_tuples.count(ids) > 1]
        raise ConfigError(f"teacher '{name}': verbalizers {', '.join(same)} tokenize to the same tokens, so the model "
                          "cannot tell those classes apart; give them other words with --verbalizers.")
    firsts = [ids[0] for ids in continuations]
    distinct = len(set(firsts)) == len(firsts)
    if asked is Scoring.FIRST_TOKEN and not distinct:
        clash = [w for w, first in zip(words, firsts) if firsts.count(first) > 1]
        raise ConfigError(f"teacher '{name}': --scoring first-token needs verbalizers with distinct first tokens, and "
                          f"{', '.join(clash)} start with the same token; use --scoring sequence (or auto).")
    if asked is Scoring.AUTO:
        return Scoring.FIRST_TOKEN if distinct else Scoring.SEQUENCE
    return asked


class CausalLMTeacher:
    """A causal LM scoring verbalizers (a `TeacherRunner` that also renders its own prompts: `prepare`)."""

    def __init__(self, resolved: ResolvedTeacher, device: torch.device, dtype: torch.dtype, max_length: int,
                 batch_tokens: int = 4096):
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        self.name = resolved.spec.name
        self.device = device
        self.prompt: Prompt = resolved.prompt
        self.max_length = max_length
        self.tokenizer = load_tokenizer(self.name, resolved.directory)
        self.model = load_teacher_model(self.name, AutoModelForCausalLM, resolved.directory, dtype, device, max_length)
        self.attn_implementation = getattr(self.model.config, "_attn_implementation", None) or "eager"
        self.providers: list[str] = []
        self.pad_left = True  # the last position is the last column, for every row
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self.sequence = resolved.scoring == Scoring.SEQUENCE.value
        # transformers 5 renamed `past_key_values` to `cache` (inputs and outputs); older versions know only the first.
        self._cache_name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        # Known from the prompt alone, so a teacher that shares another's prepared rows (same tokenizer and
        # prompt: build prepares a split once per group) is ready without preparing any.
        has_pairs = PAIR_SLOT in self.prompt.template
        suffix = self.prompt.pieces(self.prompt.shots_for("", None), has_pairs).suffix
        self._continuations = continuation_ids(self.tokenizer, suffix, self.prompt.verbalizers)
        self._pieces_cache: dict = {}
        self._prefix_caches: dict = {}
        self.batch_tokens = batch_tokens
        self._calibration: np.ndarray | None = self._content_free(has_pairs) if self.prompt.calibrate else None

    # --- prompts to tokens --------------------------------------------------------------------------------

    def prepare(self, split: str, texts: list[str], pairs: list[str] | None, max_length: int) -> PromptRows:
        """Each row's prompt, tokenized; a prompt over max_length loses tokens from the end of its text (and
        pair), never from the instruction, the shots or the answer cue. The tokens a row shares with its
        shot set's prompt prefix are kept once (`PromptRows.prefixes`), the row holds the rest."""
        pieces_by_shots: dict[tuple[int, ...], int] = {}  # shot set -> prefix index
        prefixes: list[np.ndarray] = []
        ids_chunks, lengths, groups, truncated = [], [], [], 0
        special = set(self.tokenizer.all_special_ids)
        for start in range(0, len(texts), _TOKENIZE_CHUNK):
            fulls, spans, row_groups = [], [], []
            for offset, text in enumerate(texts[start:start + _TOKENIZE_CHUNK]):
                row = start + offset
                pair = pairs[row] if pairs is not None else None
                shots = self.prompt.shots_for(split, row)
                key = tuple(s.sample_id for s in shots)
                if key not in pieces_by_shots:
                    pieces_by_shots[key] = len(prefixes)
                    prefixes.append(self._prefix_ids(self._pieces(shots, pair is not None).prefix, special))
                full, row_spans = self._pieces(shots, pair is not None).join(text, pair)
                fulls.append(full)
                spans.append(row_spans)
                row_groups.append(pieces_by_shots[key])
            encoded = self.tokenizer(fulls, add_special_tokens=self.prompt.chat_tokenizer is None,
                                     return_offsets_mapping=True)
            for ids, offsets, row_spans, group in zip(encoded["input_ids"], encoded["offset_mapping"], spans, row_groups):
                kept = _truncate_text(ids, offsets, row_spans, max_length, self.name)
                truncated += len(kept) < len(ids)
                prefix = prefixes[group]
                shared = len(prefix) > 0 and len(kept) > len(prefix) and kept[:len(prefix)] == prefix.tolist()
                ids_chunks.append(np.asarray(kept[len(prefix):] if shared else kept, dtype=np.int32))
                lengths.append(len(ids_chunks[-1]))
                groups.append(group if shared else NO_PREFIX)
        offsets_array = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets_array[1:])
        ids = np.concatenate(ids_chunks) if ids_chunks else np.zeros(0, np.int32)
        tokens = TokenizedRows(ids=ids, type_ids=None, offsets=offsets_array, truncated_rows=truncated)
        return PromptRows(tokens, np.asarray(groups, dtype=np.int64), prefixes)

    def _pieces(self, shots, pair: bool):
        key = (tuple(s.sample_id for s in shots), pair)
        if key not in self._pieces_cache:
            self._pieces_cache[key] = self.prompt.pieces(shots, pair)
        return self._pieces_cache[key]

    def _prefix_ids(self, prefix: str, special: set[int]) -> np.ndarray:
        """The tokens every row of a shot set starts with: the prefix's own tokens without trailing special
        tokens and without its last token (a tokenizer may merge that one with the text's first characters;
        a row whose tokens do not start with these runs whole)."""
        ids = self.tokenizer(prefix, add_special_tokens=self.prompt.chat_tokenizer is None)["input_ids"]
        while ids and ids[-1] in special:
            ids = ids[:-1]
        return np.asarray(ids[:-1], dtype=np.int64)

    def _content_free(self, has_pairs: bool) -> np.ndarray:
        """log-softmax over the K classes of the content-free input's class scores."""
        pair = CONTENT_FREE_TEXT if has_pairs else None
        full = self.prompt.render(CONTENT_FREE_TEXT, pair)
        ids = self.tokenizer(full, add_special_tokens=self.prompt.chat_tokenizer is None)["input_ids"]
        batch = {"input_ids": np.asarray([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
        raw = self._scores(batch)[0].astype(np.float64)
        return (raw - np.logaddexp.reduce(raw)).astype(np.float32)

    # --- tokens to class logits ---------------------------------------------------------------------------

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """float32 class logits [rows, K] (dataset label order) for one left-padded batch of whole prompts."""
        scores = self._scores(batch)
        return scores - self._calibration if self._calibration is not None else scores

    def score_rows(self, rows: PromptRows, start: int, end: int, events: ProgressEvents) -> np.ndarray:
        """float32 class logits [end - start, K]: per shot set, length-sorted batches under the token budget
        (prefix included), each run against the set's prefix KV cache, computed once."""
        out = np.empty((end - start, len(self._continuations)), dtype=np.float32)
        span = np.arange(start, end)
        for group in np.unique(rows.groups[start:end]):
            members = span[rows.groups[start:end] == group]
            prefix = rows.prefixes[group] if group != NO_PREFIX else None
            extra = len(prefix) if prefix is not None else 0
            for positions in token_budget_batches(rows.tokens.lengths[members] + extra, self.batch_tokens):
                fault_point("teacher_batch")
                chosen = members[positions]
                batch = pad_rows(rows.tokens, chosen, self.pad_id, pad_left=True)
                scores = self._scores(batch, prefix)
                out[chosen - start] = scores - self._calibration if self._calibration is not None else scores
                events.advance(len(chosen))
        return out

    @torch.inference_mode()
    def _prefix_cache(self, prefix: np.ndarray):
        """The KV cache of a prefix (computed once per prefix and kept; copied for each batch)."""
        key = prefix.tobytes()
        if key not in self._prefix_caches:
            ids = torch.from_numpy(prefix)[None].to(self.device)
            output = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            self._prefix_caches[key] = getattr(output, self._cache_name)  # one row's KV per shot set: small
        return self._prefix_caches[key]

    @torch.inference_mode()
    def _scores(self, batch: dict[str, np.ndarray], prefix: np.ndarray | None = None) -> np.ndarray:
        input_ids = torch.from_numpy(batch["input_ids"]).to(self.device)
        mask = torch.from_numpy(batch["attention_mask"]).to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = {}
        if prefix is not None:  # the rows continue the prefix: its KV repeated per row, positions after it
            shared = copy.deepcopy(self._prefix_cache(prefix))
            shared.batch_repeat_interleave(input_ids.shape[0])
            cache = {self._cache_name: shared}
            positions = positions + len(prefix)
            mask = torch.cat([torch.ones((mask.shape[0], len(prefix)), dtype=mask.dtype, device=self.device), mask], 1)
        output = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                            use_cache=self.sequence or prefix is not None, logits_to_keep=1, **cache)
        first = torch.log_softmax(output.logits[:, -1].float(), dim=-1)  # [B, V]
        firsts = torch.tensor([ids[0] for ids in self._continuations], device=self.device)
        scores = first[:, firsts]  # [B, K]
        if self.sequence and max(len(ids) for ids in self._continuations) > 1:
            scores = scores + self._rest_of_sequences(getattr(output, self._cache_name), mask, positions[:, -1])
        return scores.cpu().numpy()

    def _rest_of_sequences(self, cache, mask: torch.Tensor, last_position: torch.Tensor) -> torch.Tensor:
        """Sum over tokens 2.. of each verbalizer of their log-probabilities, all K continuations in one batch
        against the prompt's KV cache repeated K times. [B, K]"""
        k = len(self._continuations)
        rows = mask.shape[0]
        width = max(len(ids) for ids in self._continuations)
        tokens = torch.full((k, width), self.pad_id, dtype=torch.long, device=self.device)
        valid = torch.zeros((k, width), dtype=torch.bool, device=self.device)
        for c, ids in enumerate(self._continuations):
            tokens[c, :len(ids)] = torch.tensor(ids, device=self.device)
            valid[c, :len(ids)] = True
        cache.batch_repeat_interleave(k)
        steps = width - 1  # the last token is only predicted, never fed
        inputs = tokens[:, :steps].repeat(rows, 1)  # row-major: row b's K continuations are b*K .. b*K+K-1
        attention = torch.cat([mask.repeat_interleave(k, dim=0),
                               torch.ones((rows * k, steps), dtype=mask.dtype, device=self.device)], dim=1)
        positions = last_position.repeat_interleave(k)[:, None] + 1 + torch.arange(steps, device=self.device)
        output = self.model(input_ids=inputs, attention_mask=attention, position_ids=positions,
                            use_cache=True, **{self._cache_name: cache})
        log_probs = torch.log_softmax(output.logits.float(), dim=-1)  # [B*K, steps, V]
        targets = tokens[:, 1:].repeat(rows, 1)
        picked = log_probs.gather(-1, targets[..., None])[..., 0]
        picked = picked * valid[:, 1:].repeat(rows, 1)
        return picked.sum(-1).view(rows, k)


def _truncate_text(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]], max_length: int,
                   name: str) -> list[int]:
    """Drop `len(ids) - max_length` tokens from the ends of the text spans, longest span first."""
    excess = len(ids) - max_length
    if excess <= 0:
        return ids
    inside = [[i for i, (a, b) in enumerate(offsets) if b > a and a >= lo and b <= hi] for lo, hi in spans]
    if sum(len(tokens) for tokens in inside) < excess:
        fixed = len(ids) - sum(len(tokens) for tokens in inside)
        raise ConfigError(f"teacher '{name}': the prompt without the text is {fixed} tokens, which leaves no room under "
                          f"--max-length {max_length}; raise --max-length or use fewer --shots.")
    dropped: set[int] = set()
    for _ in range(excess):
        longest = max(inside, key=len)
        dropped.add(longest.pop())
    return [token for i, token in enumerate(ids) if i not in dropped]
