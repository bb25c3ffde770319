"""What a teacher's files are: tokenizer files, weight files, the label names a checkpoint or ONNX file carries.

Shared by the teacher resolution (identity = hashes of these files), the torch and onnx runners and
`export`/`predict`; reading an .onnx file here never loads its weights.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from mtkd_cache.errors import ConfigError, TeacherError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                    "vocab.json", "merges.txt", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model",
                    "tokenizer.model")
LABEL_NAMES_KEY = "label_names"  # metadata_props entry written by `export`: a JSON list in output order
# No square brackets in messages: the CLI prints them through rich, which would read "[onnx]" as markup.
INSTALL_HINT = "install the package's onnx extra (onnx-gpu on a CUDA machine; never both)"


def weight_files(directory: Path) -> list[str]:
    safetensors = sorted(p.name for p in directory.glob("*.safetensors"))
    chosen = safetensors or sorted(p.name for p in directory.glob("*.bin") if "training_args" not in p.name)
    index = [p.name for p in directory.glob("*.index.json")]
    return chosen + index


def config_label_names(config: dict, name: str) -> tuple[str, ...]:
    if not isinstance(config, dict):
        raise TeacherError(f"teacher '{name}': config.json holds a JSON {type(config).__name__}, not an object; "
                           "re-save the model with save_pretrained.")
    id2label = config.get("id2label")
    if not id2label:
        count = config.get("num_labels", 2)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise TeacherError(f"teacher '{name}': config.json num_labels must be a positive integer, not {count!r}.")
        return tuple(f"LABEL_{i}" for i in range(count))
    if not isinstance(id2label, dict):
        raise TeacherError(f"teacher '{name}': config.json id2label must map class ids to names, not {type(id2label).__name__}.")
    try:
        return tuple(str(id2label[key]) for key in sorted(id2label, key=int))
    except ValueError:
        raise TeacherError(f"teacher '{name}': config.json id2label has non-integer keys.") from None


def import_optional(module: str):
    """onnx/onnxruntime come from an extra; their absence is a setup problem the user can fix."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(f"the ONNX features need the Python package '{module}', which is not installed; "
                          f"{INSTALL_HINT}.") from error


@dataclass(frozen=True)
class OnnxFileInfo:
    path: Path
    data_files: tuple[str, ...]  # external weight files, relative to the model file's directory
    label_names: tuple[str, ...] | None  # from the file's metadata; None when it carries none
    dtype: str  # of the logits output: float32, float16 or bfloat16
    input_names: tuple[str, ...]


_ELEMENT_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64"}  # onnx.TensorProto element types


def read_onnx_info(path: Path) -> OnnxFileInfo:
    """Inspect an .onnx file without loading its weights: what it predicts, in what precision, which files."""
    onnx = import_optional("onnx")
    if not path.is_file():
        raise TeacherError(f"{path} does not exist; export one with `mtkd-cache export MODEL_DIR --out {path}`.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends say no more than "cannot parse"
        raise TeacherError(f"{path} is not a readable ONNX file ({type(error).__name__}: {error}); "
                           "re-export it with `mtkd-cache export`.") from None
    outputs = model.graph.output
    if not outputs or not model.graph.input:
        raise TeacherError(f"{path} holds no ONNX graph with inputs and outputs; re-export it with `mtkd-cache export`.")
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    label_names = None
    if LABEL_NAMES_KEY in metadata:
        try:
            label_names = tuple(str(name) for name in json.loads(metadata[LABEL_NAMES_KEY]))
        except (json.JSONDecodeError, TypeError):
            raise TeacherError(f"{path}: its '{LABEL_NAMES_KEY}' metadata is not a JSON list; re-export it.") from None
    data_files = sorted({entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                         if entry.key == "location"})
    missing = [name for name in data_files if not (path.parent / name).is_file()]
    if missing:
        raise TeacherError(f"{path} keeps weights in {', '.join(missing)}, which is missing beside it; copy the "
                           "external data files with the model file.")
    initializers = {tensor.name for tensor in model.graph.initializer}
    return OnnxFileInfo(
        path=path, data_files=tuple(data_files), label_names=label_names,
        dtype=_ELEMENT_DTYPES.get(outputs[0].type.tensor_type.elem_type, "unknown"),
        input_names=tuple(i.name for i in model.graph.input if i.name not in initializers),
    )


def onnx_label_names(info: OnnxFileInfo) -> tuple[str, ...]:
    """The file's output names: its metadata first, else the id2label of a config.json beside it."""
    if info.label_names:
        return info.label_names
    config_path = info.path.parent / "config.json"
    if config_path.exists():
        try:
            config = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise TeacherError(f"{config_path} beside {info.path.name} is not valid JSON ({error}).") from None
        return config_label_names(config, str(info.path))
    raise TeacherError(f"{info.path} names no labels (no '{LABEL_NAMES_KEY}' metadata and no config.json beside it); "
                       "re-export it with `mtkd-cache export` or put the model's config.json beside it.")
