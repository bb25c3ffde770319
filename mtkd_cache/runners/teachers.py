"""Teachers: where their files are, what they are (identity), how their labels map, how they run.

A teacher is named on the command line as NAME=SOURCE, where SOURCE is a local directory saved with
`save_pretrained`, a hub id (optionally `id@revision`), or an .onnx file with its tokenizer beside it
(the onnx backend). Hub ids are resolved to a local snapshot first, so everything below works on files:
the identity recorded in the manifest is a hash of those files, not of a name that can silently change
meaning (RELIABILITY.md: torchdistill's counter-example).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from mtkd_cache.errors import ConfigError, LabelSpaceError, TeacherError
from mtkd_cache.hashing import sha256_files
from mtkd_cache.layout import validate_name
from mtkd_cache.runners.model_files import TOKENIZER_FILES, config_label_names, onnx_label_names, read_onnx_info, weight_files

_GENERIC_LABEL = re.compile(r"^LABEL_(\d+)$")
ONNX_SUFFIX = ".onnx"


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher as the user named it; `label_map` renames teacher labels to dataset labels."""

    name: str
    source: str
    label_map: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, argument: str) -> TeacherSpec:
        name, sep, source = argument.partition("=")
        if not sep or not name or not source:
            raise ConfigError(f"--teacher '{argument}' must look like NAME=SOURCE, e.g. bert=./teachers/bert.")
        validate_name(name, "teacher")
        return cls(name=name, source=source)


def parse_label_map(argument: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """`NAME:TEACHER_LABEL=DATASET_LABEL,...` -> (teacher name, pairs)."""
    name, sep, body = argument.partition(":")
    pairs = [item.partition("=") for item in body.split(",") if item]
    if not sep or not pairs or any(not p[1] or not p[0] or not p[2] for p in pairs):
        raise ConfigError(
            f"--label-map '{argument}' must look like NAME:TEACHER_LABEL=DATASET_LABEL,..., e.g. bert:POS=positive,NEG=negative."
        )
    return name, tuple((p[0], p[2]) for p in pairs)


def parse_teachers(teachers: list[str], label_maps: list[str] | None = None) -> tuple[TeacherSpec, ...]:
    """`--teacher NAME=SOURCE` arguments with the `--label-map` of each teacher that has one."""
    maps = dict(parse_label_map(item) for item in label_maps or [])
    specs = []
    for argument in teachers:
        spec = TeacherSpec.parse(argument)
        specs.append(TeacherSpec(spec.name, spec.source, maps.pop(spec.name, ())))
    if maps:
        names = ", ".join(t.name for t in specs)
        raise ConfigError(f"--label-map names teacher(s) {', '.join(maps)} but the teachers are {names}.")
    return tuple(specs)


@dataclass(frozen=True)
class ResolvedTeacher:
    """A teacher's files and identity, as recorded in the manifest."""

    spec: TeacherSpec
    directory: Path
    revision: str | None
    weights_sha256: str
    tokenizer_sha256: str
    model_label_names: tuple[str, ...]
    label_mapping: tuple[int, ...]  # for dataset class c, the model's output index
    model_file: Path | None = None  # the .onnx file of an ONNX teacher; None for a checkpoint directory
    file_dtype: str | None = None  # the precision an ONNX file was exported in (it runs as it is)
    backend: str | None = None  # set where it differs from a checkpoint's torch/onnx: causal-lm, openai
    prompt: object | None = None  # prompts.Prompt of a causal-lm or openai teacher
    scoring: str = ""  # how class logits are read from a language model (recorded)
    endpoint: object | None = None  # openai_runner.Endpoint of an openai teacher (holds no key)


def checkpoint_files(name: str, directory: Path) -> tuple[dict, list[str], list[str]]:
    """(config, weight files, tokenizer files) of a save_pretrained directory; a TeacherError naming what is
    missing otherwise."""
    config_path = directory / "config.json"
    if not config_path.exists():
        raise TeacherError(f"teacher '{name}': {directory} has no config.json; is it a save_pretrained directory?")
    config = read_model_config(config_path, name)
    weights = weight_files(directory)
    if not weights:
        raise TeacherError(f"teacher '{name}': {directory} has no weights (*.safetensors or *.bin).")
    tokenizer_files = [f for f in TOKENIZER_FILES if (directory / f).exists()]
    if not tokenizer_files:
        raise TeacherError(f"teacher '{name}': {directory} has no tokenizer files; save the tokenizer beside the model.")
    return config, weights, tokenizer_files


def resolve_teacher(spec: TeacherSpec, dataset_label_names: tuple[str, ...]) -> ResolvedTeacher:
    if spec.source.endswith(ONNX_SUFFIX):
        return _resolve_onnx(spec, dataset_label_names)
    directory, revision = local_files(spec)
    config, weights, tokenizer_files = checkpoint_files(spec.name, directory)
    _require_classifier_head(config, spec.name, directory)
    model_labels = config_label_names(config, spec.name)
    return ResolvedTeacher(
        spec=spec,
        directory=directory,
        revision=revision,
        weights_sha256=sha256_files(directory, ["config.json", *weights]),
        tokenizer_sha256=sha256_files(directory, tokenizer_files),
        model_label_names=model_labels,
        label_mapping=map_labels(spec.name, model_labels, dataset_label_names, dict(spec.label_map)),
    )


def read_model_config(path: Path, name: str) -> dict:
    """A teacher's config.json as a dict; a file that is not JSON, or JSON that is not an object, is refused."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise TeacherError(f"teacher '{name}': cannot read {path} ({error}); re-save the model with save_pretrained.") from error
    if not isinstance(config, dict):
        raise TeacherError(f"teacher '{name}': {path} holds a JSON {type(config).__name__}, not an object; "
                           "re-save the model with save_pretrained.")
    return config


def _resolve_onnx(spec: TeacherSpec, dataset_label_names: tuple[str, ...]) -> ResolvedTeacher:
    path = Path(spec.source).expanduser().resolve()
    info = read_onnx_info(path)
    directory = path.parent
    tokenizer_files = [f for f in TOKENIZER_FILES if (directory / f).exists()]
    if not tokenizer_files:
        raise TeacherError(f"teacher '{spec.name}': no tokenizer files beside {path}; `mtkd-cache export` saves them "
                           "there, or save the model's tokenizer into that directory.")
    model_labels = onnx_label_names(info)
    return ResolvedTeacher(
        spec=spec,
        directory=directory,
        revision=None,
        # The graph and its external weight files are the model; config.json (if any) only names labels,
        # and those are compared through label_mapping.
        weights_sha256=sha256_files(directory, [path.name, *info.data_files]),
        tokenizer_sha256=sha256_files(directory, tokenizer_files),
        model_label_names=model_labels,
        label_mapping=map_labels(spec.name, model_labels, dataset_label_names, dict(spec.label_map)),
        model_file=path,
        file_dtype=info.dtype,
    )


def local_files(spec: TeacherSpec) -> tuple[Path, str | None]:
    path = Path(spec.source).expanduser()
    if path.is_dir():
        # A path inside the hub cache (…/snapshots/<commit>) still carries its revision.
        revision = path.name if path.parent.name == "snapshots" else None
        return path.resolve(), revision
    if spec.source.startswith((".", "/", "~")) or path.exists():
        raise TeacherError(f"teacher '{spec.name}': {spec.source} is not a directory; pass a save_pretrained directory or a hub id.")
    repo_id, _, revision = spec.source.partition("@")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo_id=repo_id,
            revision=revision or None,
            allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors", "*.bin"],
            ignore_patterns=["*onnx*", "*.h5", "*.msgpack", "*.ot", "*training_args*"],
        )
    except Exception as error:
        raise TeacherError(
            f"teacher '{spec.name}': cannot get {spec.source} from the hub ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); check the id and network, or pass a local directory."
        ) from error
    return Path(local), Path(local).name


def map_labels(name: str, model_labels: tuple[str, ...], dataset_labels: tuple[str, ...],
               explicit: dict[str, str]) -> tuple[int, ...]:
    """For each dataset class, the index of the teacher output that predicts it.

    Labels are matched by name, after applying `explicit` (--label-map). A teacher whose labels are all
    the generic LABEL_0..LABEL_{K-1} of an un-named head is taken in the dataset's order, since its
    names carry no meaning to match on.
    """
    renamed = tuple(explicit.get(label, label) for label in model_labels)
    unknown_keys = set(explicit) - set(model_labels)
    if unknown_keys:
        raise LabelSpaceError(
            f"--label-map for teacher '{name}' names {sorted(unknown_keys)}, which the teacher does not predict; "
            f"its labels are {list(model_labels)}."
        )
    if sorted(renamed) == sorted(dataset_labels) and len(set(renamed)) == len(renamed):
        return tuple(renamed.index(label) for label in dataset_labels)
    generic = [_GENERIC_LABEL.match(label) for label in model_labels]
    if not explicit and all(generic) and [int(m.group(1)) for m in generic] == list(range(len(dataset_labels))):
        return tuple(range(len(dataset_labels)))
    if set(dataset_labels) < set(renamed) and len(set(renamed)) == len(renamed):
        # e.g. only the test split was built and a class never occurs in it: renaming cannot add a class
        raise LabelSpaceError(
            f"the dataset's labels {list(dataset_labels)} are a subset of teacher '{name}''s {list(renamed)} (a split "
            f"without some class?); pass --label-names {','.join(renamed)} so the dataset has every class the "
            "teacher predicts, in its order."
        )
    raise LabelSpaceError(
        f"teacher '{name}' predicts labels {list(renamed)} but the dataset's labels are {list(dataset_labels)}; "
        f"map them with --label-map {name}:TEACHER_LABEL=DATASET_LABEL,... or use a teacher trained on these labels."
    )


def _require_classifier_head(config: dict, name: str, directory: Path) -> None:
    """A bare encoder (architectures BertModel, a sentence-transformers checkpoint) has no trained head: its
    LABEL_0/LABEL_1 default would be reported as a label mismatch that no --label-map can fix."""
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures and all(
            isinstance(a, str) and not a.endswith(("ForSequenceClassification", "ForTokenClassification"))
            for a in architectures) and "id2label" not in config:
        raise TeacherError(
            f"teacher '{name}': {directory} is an encoder without a classification head ({', '.join(architectures)}); "
            f"fine-tune it on the dataset first (`mtkd-cache finetune --model {directory} ...`) and pass the "
            "fine-tuned OUT/student as the teacher."
        )


def check_backend(teacher: ResolvedTeacher, backend: str, dtype: str) -> None:
    """An .onnx source needs --backend onnx and a checkpoint --backend torch; an ONNX file runs as exported."""
    name, source = teacher.spec.name, teacher.spec.source
    if backend == "onnx" and teacher.model_file is None:
        raise ConfigError(f"teacher '{name}': --backend onnx runs .onnx files, and {source} is not one; export it "
                          f"with `mtkd-cache export {source} --out {name}/model.onnx`.")
    if backend == "torch" and teacher.model_file is not None:
        raise ConfigError(f"teacher '{name}': {source} is an ONNX file; build with --backend onnx.")
    if teacher.file_dtype is not None and dtype not in ("auto", teacher.file_dtype):
        raise ConfigError(f"teacher '{name}': {source} was exported in {teacher.file_dtype} and the onnx backend runs "
                          f"it as it is; drop --dtype {dtype} or export the model in that precision.")
