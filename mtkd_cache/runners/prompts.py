"""Prompts for teachers that read text as a language model: the template, the verbalizers, the few-shot
examples, shared by the local causal-LM backend and the endpoint backend.

A template is a text file holding `{text}` once (and `{text_pair}` once for a pair dataset); no other
brace is special, so a prompt may quote JSON. Each dataset label has a verbalizer, the word a model is
scored on for that class (default: the label name). Few-shot examples are drawn with a seed from a
labeled split; each shot is the filled template followed by its verbalizer, before the scored text. A
row of the shots split is never shown itself as a shot: it gets the spare example drawn after the others.

The continuation scored for class c is `answer_space + verbalizer_c`, where `answer_space` is one space
when the rendered prompt does not already end in whitespace (the convention of zero-shot evaluation
harnesses: "Answer:" is followed by " sports", a chat template's "assistant\n" by "sports").

A prompt is rendered once per shot set with placeholders, then split around them into a prefix, a
middle and a suffix, so a row's text is spliced in without re-running the chat template, and its exact
character span is known (truncation cuts the text, never the instruction or the answer cue).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtkd_cache.choices import Choice
from mtkd_cache.errors import ConfigError
from mtkd_cache.hashing import sha256_bytes

TEXT_SLOT = "{text}"
PAIR_SLOT = "{text_pair}"
# Placeholders the chat template sees instead of the texts; letters only, so no template escapes them.
_TEXT_MARK = "MTKDTEXTSLOTq7"
_PAIR_MARK = "MTKDPAIRSLOTq7"
CONTENT_FREE_TEXT = "N/A"  # contextual calibration's content-free input (Zhao et al., 2021)


class Scoring(Choice):
    """How a class logit is read from a language model: `first-token` (one next-token distribution gives all
    K, needs distinct first tokens), `sequence` (each verbalizer's full token sequence), `auto` (first-token
    when the first tokens are distinct, else sequence)."""

    AUTO = "auto"
    FIRST_TOKEN = "first-token"
    SEQUENCE = "sequence"


@dataclass(frozen=True)
class PromptConfig:
    """How a causal-LM or endpoint teacher is prompted; applies to every teacher of one `build`."""

    template: Path | None = field(default=None, metadata={"help": (
        "Prompt template file with {text} (and {text_pair}) for --backend causal-lm|openai; applied through the "
        "tokenizer's chat template when it has one.")})
    verbalizers: tuple[tuple[str, str], ...] = field(default=(), metadata={"help": (
        "label=word,... : the word each class is scored on (default: the label names).")})
    shots: int = field(default=0, metadata={"help": "Few-shot examples in the prompt, drawn from --shots-split."})
    shots_split: str = field(default="train", metadata={"help": "Labeled split the few-shot examples come from."})
    shots_seed: int = field(default=0, metadata={"help": "Seed of the few-shot draw."})
    scoring: Scoring = field(default=Scoring.AUTO, metadata={"help": (
        "auto, first-token (one forward pass gives every class) or sequence (each verbalizer's full token "
        "sequence, the prompt's KV cache reused).")})
    calibrate: bool = field(default=False, metadata={"help": (
        "Contextual calibration: subtract the class log-probabilities of a content-free input ('N/A').")})

    def __post_init__(self) -> None:
        object.__setattr__(self, "scoring", Scoring.parse(self.scoring, "--scoring"))
        object.__setattr__(self, "verbalizers", tuple(tuple(pair) for pair in self.verbalizers))
        if self.template is not None:
            object.__setattr__(self, "template", Path(self.template))
        if self.shots < 0:
            raise ConfigError(f"--shots must be 0 or more, not {self.shots}.")
        labels = [label for label, _ in self.verbalizers]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            raise ConfigError(f"--verbalizers names label(s) {', '.join(twice)} twice; give one word per label.")
        if any(not word.strip() for _, word in self.verbalizers):
            raise ConfigError("--verbalizers has an empty word; every label needs a word, e.g. sports=sports.")

    @property
    def used(self) -> bool:
        """True when any prompt option was given (they are refused for backends that take no prompt)."""
        return self != PromptConfig()


def parse_verbalizers(argument: str | None) -> tuple[tuple[str, str], ...]:
    """`label=word,...` -> pairs (the word keeps inner spaces; `label=two words` is a multi-token verbalizer)."""
    if not argument:
        return ()
    pairs = [item.partition("=") for item in argument.split(",") if item.strip()]
    if any(not sep or not label.strip() or not word.strip() for label, sep, word in pairs):
        raise ConfigError(f"--verbalizers '{argument}' must look like label=word,..., e.g. politics=politics,sports=sport.")
    return tuple((label.strip(), word.strip()) for label, _, word in pairs)


@dataclass(frozen=True)
class Shot:
    sample_id: int
    text: str
    text_pair: str | None
    label: int  # dataset class index


@dataclass(frozen=True)
class PromptPieces:
    """A rendered prompt split around the row's texts: prefix + text + middle + pair + suffix."""

    prefix: str
    middle: str  # between text and text_pair; "" without a pair
    suffix: str

    def join(self, text: str, pair: str | None) -> tuple[str, list[tuple[int, int]]]:
        """The full prompt and the character spans of the text (and pair) in it."""
        start = len(self.prefix)
        spans = [(start, start + len(text))]
        full = self.prefix + text
        if pair is not None:
            full += self.middle
            spans.append((len(full), len(full) + len(pair)))
            full += pair
        return full + self.suffix, spans


@dataclass(frozen=True)
class Prompt:
    """A teacher's resolved prompt: what the manifest records and how a row becomes a prompt string."""

    template: str
    sha256: str
    label_names: tuple[str, ...]
    verbalizers: tuple[str, ...]  # one word per dataset label, in dataset order
    shots: tuple[Shot, ...]  # drawn + one spare (the spare replaces a shot for that shot's own row)
    shots_count: int
    shots_split: str
    shots_seed: int
    calibrate: bool
    chat_tokenizer: object | None = field(default=None, compare=False, repr=False)  # renders its chat template

    @property
    def chat_template(self) -> str | None:
        return getattr(self.chat_tokenizer, "chat_template", None) or None

    def shots_for(self, split: str, sample_id: int | None) -> tuple[Shot, ...]:
        """The shots shown to one row: never the row itself."""
        chosen = self.shots[:self.shots_count]
        if split == self.shots_split and sample_id is not None and any(s.sample_id == sample_id for s in chosen):
            return tuple(s for s in self.shots if s.sample_id != sample_id)[:self.shots_count]
        return chosen

    def pieces(self, shots: tuple[Shot, ...], pair: bool) -> PromptPieces:
        """Render once with placeholders (through the chat template when there is one) and split around them."""
        query = _fill(self.template, _TEXT_MARK, _PAIR_MARK if pair else None)
        if self.chat_template is None:
            rendered = "".join(_fill(self.template, s.text, s.text_pair) + self.answer_space(self.template)
                               + self.verbalizers[s.label] + "\n\n" for s in shots) + query
        else:
            rendered = self._render_chat(shots, query)
        prefix, _, rest = rendered.partition(_TEXT_MARK)
        if pair:
            middle, _, suffix = rest.partition(_PAIR_MARK)
        else:
            middle, suffix = "", rest
        return PromptPieces(prefix, middle, suffix)

    def _render_chat(self, shots: tuple[Shot, ...], query: str) -> str:
        messages = self._messages(shots, query)
        return self.chat_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _messages(self, shots: tuple[Shot, ...], query: str) -> list[dict[str, str]]:
        """A shot is a user turn (the filled template) answered by an assistant turn (its verbalizer)."""
        messages = []
        for shot in shots:
            messages.append({"role": "user", "content": _fill(self.template, shot.text, shot.text_pair)})
            messages.append({"role": "assistant", "content": self.verbalizers[shot.label]})
        messages.append({"role": "user", "content": query})
        return messages

    def messages(self, text: str, pair: str | None, split: str = "", sample_id: int | None = None) -> list[dict]:
        """One row's prompt as chat messages (what a chat endpoint renders with its own template)."""
        return self._messages(self.shots_for(split, sample_id), _fill(self.template, text, pair))

    def render(self, text: str, pair: str | None, split: str = "", sample_id: int | None = None) -> str:
        """One row's whole prompt string (what a direct computation or an endpoint sees)."""
        return self.pieces(self.shots_for(split, sample_id), pair is not None).join(text, pair)[0]

    @staticmethod
    def answer_space(prompt: str) -> str:
        return "" if not prompt or prompt[-1].isspace() else " "

    def identity(self) -> dict:
        """The manifest's record of this prompt (every field decides the logits)."""
        return {
            "prompt_template": self.template,
            "prompt_sha256": self.sha256,
            "chat_template_sha256": sha256_bytes(self.chat_template.encode()) if self.chat_template else "",
            "verbalizers": dict(zip(self.label_names, self.verbalizers)),
            "shots": {"split": self.shots_split, "seed": self.shots_seed, "count": self.shots_count,
                      "sample_ids": [s.sample_id for s in self.shots]} if self.shots_count else {},
            "calibration": f"contextual (content-free '{CONTENT_FREE_TEXT}')" if self.calibrate else "none",
        }


def _fill(template: str, text: str, pair: str | None) -> str:
    """The template with the row's texts; the pair goes in first, so a text holding "{text_pair}" stays as it is."""
    if pair is not None:
        template = template.replace(PAIR_SLOT, pair)
    return template.replace(TEXT_SLOT, text)


def load_prompt(config: PromptConfig, label_names: tuple[str, ...], splits: dict, has_pairs: bool,
                backend: str, tokenizer=None) -> Prompt:
    """Read and check the template, map verbalizers to labels, draw the shots (`splits`: TaskData.splits)."""
    if config.template is None:
        raise ConfigError(f"--backend {backend} needs --prompt FILE: a template with {TEXT_SLOT}, e.g. "
                          "'Text: {text}\\nTopic:'.")
    template = _read_template(config.template)
    if template.count(TEXT_SLOT) != 1:
        raise ConfigError(f"--prompt {config.template} must hold {TEXT_SLOT} exactly once; it holds it "
                          f"{template.count(TEXT_SLOT)} time(s).")
    pairs_in_template = template.count(PAIR_SLOT)
    if has_pairs and pairs_in_template != 1:
        raise ConfigError(f"the dataset has text pairs, so --prompt {config.template} must hold {PAIR_SLOT} exactly once.")
    if not has_pairs and pairs_in_template:
        raise ConfigError(f"--prompt {config.template} holds {PAIR_SLOT} but the dataset has no --text-pair-column.")
    words = dict(config.verbalizers)
    unknown = sorted(set(words) - set(label_names))
    if unknown:
        raise ConfigError(f"--verbalizers names {', '.join(unknown)}, which are not labels of the dataset "
                          f"({', '.join(label_names)}).")
    verbalizers = tuple(words.get(label, label) for label in label_names)
    repeated = sorted({w for w in verbalizers if verbalizers.count(w) > 1})
    if repeated:
        raise ConfigError(f"verbalizer(s) {', '.join(repeated)} stand for more than one label; give each label its "
                          "own word with --verbalizers label=word,...")
    return Prompt(
        template=template, sha256=sha256_bytes(template.encode("utf-8")), label_names=tuple(label_names),
        verbalizers=verbalizers, shots=draw_shots(config, splits), shots_count=config.shots,
        shots_split=config.shots_split, shots_seed=config.shots_seed, calibrate=config.calibrate,
        chat_tokenizer=tokenizer if getattr(tokenizer, "chat_template", None) else None,
    )


def _read_template(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--prompt {path} does not exist; give a template file with {TEXT_SLOT}.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--prompt {path} cannot be read as UTF-8 text ({error}).") from error


def draw_shots(config: PromptConfig, splits: dict) -> tuple[Shot, ...]:
    """`shots` labeled rows of the shots split plus one spare, drawn with the seed (none when shots is 0)."""
    if config.shots == 0:
        return ()
    split = splits.get(config.shots_split)
    if split is None:
        raise ConfigError(f"--shots-split {config.shots_split} is not a split of the dataset ({', '.join(splits)}).")
    labeled = np.flatnonzero(np.asarray(split.labels) >= 0)
    if len(labeled) < config.shots + 1:
        raise ConfigError(f"--shots {config.shots} needs {config.shots + 1} labeled rows in split "
                          f"'{config.shots_split}' (the shots and one spare); it has {len(labeled)}.")
    picked = np.random.default_rng(config.shots_seed).choice(labeled, size=config.shots + 1, replace=False)
    pairs = split.text_pairs
    return tuple(Shot(int(i), split.texts[i], pairs[i] if pairs is not None else None, int(split.labels[i]))
                 for i in picked)


def continuation_ids(tokenizer, suffix: str, words: Sequence[str]) -> list[list[int]]:
    """Each verbalizer's token ids as it continues a prompt ending in `suffix` (tokenized in context, so a
    tokenizer that merges across the boundary is honoured where it keeps the suffix's own tokens)."""
    head = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    result = []
    for word in words:
        continuation = Prompt.answer_space(suffix) + word
        joined = tokenizer(suffix + continuation, add_special_tokens=False)["input_ids"]
        ids = joined[len(head):] if joined[:len(head)] == head else tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"verbalizer {word!r} tokenizes to no tokens; give another word with --verbalizers.")
        result.append(list(ids))
    return result
