"""The schema of `params.yaml`: one validated model for every stage and both runners.

A typo, a wrong type or an out-of-range value is a `ConfigError` that names the file, the key and what is
allowed, so that `dvc repro`, `kdflow run` and the tests all fail the same way on the same bad input.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

from pydantic import (AfterValidator, BaseModel, Discriminator, Field, StrictInt, Tag, ValidationError, field_validator,
                      model_validator)
from pydantic.fields import FieldInfo

from kdflow.media_specs import ImageFolderSource, ImageFolderTransfer, ImageSpec, TextSpec
from kdflow.sections import Section
from kdflow.zoo_specs import HFSpec, TimmSpec, TorchvisionSpec

STAGE_SECTIONS = ("data", "train_teacher", "soft_labels", "distill", "finetune", "evaluate")


class ConfigError(ValueError):
    """A params file that does not fit the schema."""


# --- architectures -----------------------------------------------------------------------------------------


class MLPSpec(Section):
    arch: Literal["mlp"]
    hidden: list[Annotated[int, Field(gt=0)]] = [64, 64]
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class CNN1DSpec(Section):
    arch: Literal["cnn1d"]
    channels: list[Annotated[int, Field(gt=0)]] = Field(default=[32, 32, 32], min_length=1)
    kernel_size: int = Field(5, gt=0)
    stride: int = Field(2, gt=0)
    padding_mode: Literal["zeros", "circular"] = "zeros"
    pool: Literal["flatten", "max", "avg"] = Field("flatten", description="flatten, or global max/avg over length")
    hidden: int = Field(0, ge=0, description="width of a fully connected layer before the head; 0 for none")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class CNN2DSpec(Section):
    """For image-like inputs (channels, height, width); a (height, width) input gets one channel."""

    arch: Literal["cnn2d"]
    channels: list[Annotated[int, Field(gt=0)]] = Field(default=[16, 32], min_length=1)
    kernel_size: int = Field(3, gt=0)
    stride: int = Field(1, gt=0)
    pool: Literal["flatten", "max", "avg"] = Field("max", description="flatten, or global max/avg over height and width")
    hidden: int = Field(0, ge=0, description="width of a fully connected layer before the head; 0 for none")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class LinearSpec(Section):
    arch: Literal["linear"]


class CustomSpec(Section):
    """A user's own architecture: `factory(input_shape=..., num_classes=..., **options)` returning a module whose
    classifier models.adapters finds: a `head` beside a `backbone` Sequential (as the built-in ones), a timm-style
    `get_classifier()`, or a final Linear layer."""

    arch: Literal["custom"]
    factory: str = Field(description="import path of a function, 'my_pkg.nets:make_student'")
    options: dict[str, Any] = {}

    @field_validator("factory")
    @classmethod
    def _import_path(cls, factory: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", factory):
            raise ValueError("must be an import path 'module.submodule:function', e.g. 'my_pkg.nets:make_student'")
        return factory


ModelSpec = Annotated[Union[MLPSpec, CNN1DSpec, CNN2DSpec, LinearSpec, CustomSpec, TimmSpec, TorchvisionSpec, HFSpec],
                      Field(discriminator="arch")]


# --- optimisation ------------------------------------------------------------------------------------------


Device = Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
                              description="auto (CUDA, else the CPU), cpu, mps, cuda or cuda:N (a GPU index)")]


class TrainSpec(Section):
    """Mini-batch gradient descent: batch_size 1 is SGD, "full" (or >= the set) is full-batch descent."""

    epochs: int = Field(30, ge=0, description="0: no training, for a teacher started from weights only")
    batch_size: Union[Annotated[int, Field(gt=0)], Literal["full"]] = 128
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    schedule: Literal["constant", "cosine", "step"] = "constant"
    step_size: int = Field(10, gt=0, description="epochs between decays of the step schedule")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="decay factor of the step schedule")
    monitor: Literal["val_loss", "val_accuracy"] = Field("val_loss", description="what early stopping and the kept checkpoint follow")
    patience: int = Field(10, ge=0, description="epochs without improvement of `monitor` before stopping; 0 never stops")
    min_delta: float = Field(0.0, ge=0.0)
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="lr_effective = lr * (batch/reference_batch_size), or its square root; none keeps lr")
    reference_batch_size: int = Field(128, gt=0, description="the batch size `lr` was tuned for, under lr_scaling")
    resume_every: int = Field(1, ge=0, description="epochs between resumable training-state checkpoints; 0 never")
    device: Device = "auto"
    threads: int = Field(1, gt=0, description="torch intra-op threads on the CPU, whichever runner trains the model: "
                                              "the count changes the weights' last bits, so it is fixed here")
    memory_budget_mb: float = Field(1024, gt=0, description="a training set larger than this in memory is streamed "
                                                            "from its Parquet files instead of loaded")
    stream_workers: int = Field(2, ge=0, description="threads decoding Parquet row groups on the streamed path (0: "
                                                   "inline); threads, not processes, which each cost ~85 MB")
    shuffle_row_groups: int = Field(4, gt=0, description="row groups held and shuffled together on the streamed path")
    nproc_per_node: int = Field(1, gt=0, description="processes (one per GPU) training this stage under torchrun "
                                                      "with DDP; 1 trains in the stage's own process")
    bf16: bool = Field(False, description="bfloat16 autocast for the forward pass and loss")
    hflip: bool = Field(False, description="images: flip left-right at random each epoch (train-time augmentation)")
    crop_padding: int = Field(0, ge=0, description="images: pad by this many pixels and crop back at a random shift")


# --- data --------------------------------------------------------------------------------------------------


ClassName = Union[StrictInt, str]


class MNIST1DSource(Section):
    """Labelled data from the MNIST-1D generator; seed 42 with 5,000 samples is the published 4,000/1,000 split."""

    kind: Literal["mnist1d"] = "mnist1d"
    seed: int = Field(42, ge=0)
    num_samples: int = Field(5000, ge=100, description="samples generated over all ten digits")


class MNIST1DTransfer(Section):
    """Unlabelled source-domain samples from the generator under another seed; labels are never written."""

    kind: Literal["mnist1d"] = "mnist1d"
    seed: int = Field(1, ge=0)
    size: int = Field(50000, ge=0, description="samples of the source classes kept, labels dropped")


class FileColumns(Section):
    """Rows of a CSV, Parquet or .npz file (`x`, and `y` for labels); kdflow.sources reads and checks them."""

    kind: Literal["file"]
    path: str = Field(min_length=1, description="relative to the project root; under data/raw (a dvc.yaml dep; prepare refuses a path outside it)")
    features: Optional[list[str]] = Field(None, min_length=1, description="feature columns, in order")
    feature_prefix: Optional[str] = Field(None, min_length=1, description="or: every column starting with this")
    sample_id: Optional[str] = Field(None, description="a column of unique row ids; default: file name and row number")
    image_column: Optional[str] = Field(None, min_length=1, description="or: a column of PNG/JPEG bytes (data.images)")
    text_column: Optional[str] = Field(None, min_length=1, description="or: a column of texts (data.text's tokenizer)")

    @model_validator(mode="after")
    def _one_feature_rule(self) -> "FileColumns":
        given = [name for name in ("features", "feature_prefix", "image_column", "text_column")
                 if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of features, feature_prefix, image_column, text_column, not {' and '.join(given)}")
        return self


class LabelledFile(FileColumns):
    label: str = Field("label", min_length=1, description="the label column (ints or strings)")
    classes: Optional[list[ClassName]] = Field(
        None, min_length=2, description="every label the file may hold; default: the task classes drawn from it")
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5, description="share of each class held out for testing")


class FileSource(LabelledFile):
    reshape: Optional[list[Annotated[int, Field(gt=0)]]] = Field(
        None, min_length=1, description="the shape of one sample, e.g. [1, 8, 8]; default: flat")


class FileTransfer(FileColumns):
    """Unlabelled rows; a `label` column, if the file has one, is dropped unread."""

    label: str = Field("label", min_length=1)


def _kind(value: Any) -> Any:
    """The `kind` tag, `mnist1d` when omitted (the default scenario's sections may leave it out)."""
    return value.get("kind", "mnist1d") if isinstance(value, Mapping) else getattr(value, "kind", None)


SourceSpec = Annotated[Union[Annotated[MNIST1DSource, Tag("mnist1d")], Annotated[FileSource, Tag("file")],
                             Annotated[ImageFolderSource, Tag("images")]], Discriminator(_kind)]
TransferSpec = Annotated[Union[Annotated[MNIST1DTransfer, Tag("mnist1d")], Annotated[FileTransfer, Tag("file")],
                               Annotated[ImageFolderTransfer, Tag("images")]], Discriminator(_kind)]
TargetSpec = Annotated[Union[Annotated[LabelledFile, Tag("file")], Annotated[ImageFolderSource, Tag("images")]],
                       Discriminator(_kind)]


class DataSpec(Section):
    source: SourceSpec = MNIST1DSource()
    source_classes: list[ClassName] = Field(default=[0, 1, 2, 3, 4], min_length=2)
    transfer: TransferSpec = MNIST1DTransfer()
    target: Optional[TargetSpec] = Field(None, description="the target task's own file; default: from the source")
    target_classes: list[ClassName] = Field(default=[5, 6, 7, 8, 9], min_length=2)
    target_labels_per_class: int = Field(50, gt=0, description="labelled target training samples per class")
    target_val_per_class: int = Field(50, gt=0)
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="share of each source class held out")
    images: ImageSpec = Field(ImageSpec(), description="how image folders and image columns become rows")
    text: Optional[TextSpec] = Field(None, description="the tokenizer of text columns")

    @model_validator(mode="after")
    def _consistent(self) -> "DataSpec":
        for name in ("source_classes", "target_classes"):
            classes = getattr(self, name)
            if len({str(c) for c in classes}) != len(classes):
                raise ValueError(f"{name} lists a class twice: {classes}")
        generated = [name for name, from_generator in (
            ("source_classes", self.source.kind == "mnist1d"),
            ("target_classes", self.source.kind == "mnist1d" and self.target is None)) if from_generator]
        for name in generated:
            if not all(isinstance(c, int) and 0 <= c <= 9 for c in getattr(self, name)):
                raise ValueError(f"{name} must be MNIST-1D digits 0-9 (got {getattr(self, name)})")
        if self.target is None:
            target = {str(c) for c in self.target_classes}
            shared = [c for c in self.source_classes if str(c) in target]
            if shared:
                raise ValueError(f"source_classes and target_classes share {shared}; the target task needs new classes")
        texts = [name for name in ("source", "transfer", "target") if getattr(getattr(self, name), "text_column", None)]
        if texts and self.text is None:
            raise ValueError(f"data.{texts[0]}.text_column needs data.text: {{tokenizer: <folder of a saved tokenizer>}}")
        if self.source.kind == self.transfer.kind == "mnist1d" and self.transfer.size and self.transfer.seed == self.source.seed:
            raise ValueError("transfer.seed equals source.seed, so the transfer set would repeat the source samples")
        return self


# --- stages ------------------------------------------------------------------------------------------------


def _trains(train: TrainSpec) -> TrainSpec:
    if train.epochs == 0:
        raise ValueError("epochs: 0 trains nothing; only a teacher started from weights (train_teacher.weights) "
                         "may skip training")
    return train


# What a student or target model trains with: at least one epoch.
TrainingSpec = Annotated[TrainSpec, AfterValidator(_trains)]


class TeacherSpec(Section):
    model: ModelSpec = CNN1DSpec(arch="cnn1d")
    weights: Optional[str] = Field(
        None, min_length=1, description="start from these weights: a state dict (.pt, .safetensors) under the "
                                        "project root, or an MLflow model URI (models:/kdflow-teacher@champion)")
    train: TrainSpec = TrainSpec()

    @model_validator(mode="after")
    def _weights_for_no_training(self) -> "TeacherSpec":
        if self.weights is None:
            _trains(self.train)
        return self


def inference_threads() -> FieldInfo:
    return Field(1, gt=0, description="torch intra-op threads on the CPU, whichever runner runs the stage: the count "
                                      "changes a convolution's outputs in their last bits, so it is fixed here")


class SoftLabelSpec(Section):
    chunk_size: int = Field(8192, gt=0, description="samples per inference chunk; bounds peak memory")
    device: Device = "auto"
    threads: int = inference_threads()


class DistillSpec(Section):
    """Hinton's KD. `alpha` weighs the soft (teacher) term: L = alpha*T^2*KL + (1-alpha)*CE(labels)."""

    student: ModelSpec = MLPSpec(arch="mlp")
    temperature: float = Field(4.0, gt=0.0)
    alpha: float = Field(1.0, ge=0.0, le=1.0)
    train: TrainingSpec = TrainSpec()
    max_param_ratio: float = Field(0.25, gt=0.0, le=1.0, description="student params / teacher params, at most")


class FinetuneSpec(Section):
    strategy: Literal["full", "linear_probe", "gradual_unfreeze"] = "full"
    backbone_lr_mult: float = Field(1.0, ge=0.0, le=1.0)
    unfreeze_every: int = Field(5, gt=0, description="epochs between unfreezing blocks, gradual_unfreeze only")
    reinit: list[str] = Field(default=["head"], description="layer name prefixes re-initialised even on a match")
    train: TrainingSpec = TrainSpec()


class EvaluateSpec(Section):
    ece_bins: int = Field(15, gt=1)
    latency_batches: int = Field(200, gt=0, description="single-sample forward passes timed per model")
    threads: int = inference_threads()


class Params(Section):
    seed: int = 42
    data: DataSpec = DataSpec()
    train_teacher: TeacherSpec = TeacherSpec()
    soft_labels: SoftLabelSpec = SoftLabelSpec()
    distill: DistillSpec = DistillSpec()
    finetune: FinetuneSpec = FinetuneSpec()
    evaluate: EvaluateSpec = EvaluateSpec()

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, seed: int) -> int:
        if not 0 <= seed < 2**32:
            raise ValueError("seed must be in [0, 2**32)")
        return seed

    def section(self, name: str) -> dict[str, Any]:
        """One stage's section (or a part of one, `distill.student`) as plain data, for hashing and for logging."""
        node = self
        for part in name.split("."):
            node = getattr(node, part)
        return node.model_dump(mode="json")


# --- loading -----------------------------------------------------------------------------------------------


def _is_model(node: Any) -> bool:
    return isinstance(node, type) and issubclass(node, BaseModel)


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _union_members(annotation: Any) -> list[type[BaseModel]]:
    return [member for member in map(_unwrap, get_args(_unwrap(annotation))) if _is_model(member)]


def _section_of(node: Any) -> type[BaseModel] | None:
    """The section a schema node is: a model, or an optional one."""
    node = _unwrap(node)
    if _is_model(node):
        return node
    members = _union_members(node)
    return members[0] if len(members) == 1 and type(None) in get_args(node) else None


def _tags(member: type[BaseModel]) -> tuple[Any, ...]:
    """The values of a union member's tag field (`arch` for architectures, `kind` for data sources)."""
    field = member.model_fields.get("arch") or member.model_fields.get("kind")
    return get_args(field.annotation) if field else ()


def _walk(loc: tuple[Any, ...]) -> tuple[str, Any]:
    """The dotted params key an error location names, and the schema section holding its last part.

    Pydantic's locations also carry union member labels ('mlp' for the tagged architecture union, 'file' for a
    data source, 'constrained-int' for `int | "full"`); the user never wrote those, so they are not part of the key.
    """
    keys: list[str] = []
    node: Any = Params
    holder: Any = Params
    for part in loc:
        if isinstance(part, int):
            keys[-1] += f"[{part}]"
        elif _section_of(node) is not None:
            holder = _section_of(node)
            keys.append(part)
            field = holder.model_fields.get(part)
            node = field.annotation if field else None
        else:
            tagged = [m for m in _union_members(node) if part in _tags(m)]
            node = tagged[0] if tagged else node
    return ".".join(keys), holder


def _unknown_key(key: str, holder: type[BaseModel], source: str) -> str:
    return f"{source}: unknown key '{key}'; allowed keys here: {', '.join(sorted(holder.model_fields))}"


def _describe(error: dict[str, Any], key: str, holder: Any, source: str) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_key(key, holder, source)
    if kind == "union_tag_invalid":
        allowed = error.get("ctx", {}).get("expected_tags", "")
        tag = "arch" if "arch" in error["input"] else "kind"
        return f"{source}: '{key}' has an unknown {tag} {error['input'].get(tag)!r}; allowed: {allowed}"
    if kind == "literal_error":
        return f"{source}: '{key}' is {error['input']!r}; allowed values: {error['ctx']['expected']}"
    if kind == "value_error":
        got = "" if isinstance(error["input"], dict) else f" (got {error['input']!r})"  # a whole section is noise
        return f"{source}: '{key}': {error['ctx']['error']}{got}"
    return f"{source}: '{key}' {error['msg'].lower()} (got {error['input']!r})"


def _describe_all(errors: list[dict[str, Any]], source: str) -> list[str]:
    """One line per key; a value that fits no member of a union (`batch_size: half`) gets one line too."""
    by_key: dict[str, list[tuple[dict, Any]]] = {}
    for error in errors:
        key, holder = _walk(error["loc"])
        by_key.setdefault(key, []).append((error, holder))
    lines = []
    for key, found in by_key.items():
        if len(found) == 1:
            lines.append(_describe(found[0][0], key, found[0][1], source))
        else:
            reasons = " or ".join(error["msg"].lower() for error, _ in found)
            lines.append(f"{source}: '{key}' {reasons} (got {found[0][0]['input']!r})")
    return lines


def validate(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe_all(exc.errors(), source))) from None


# --- the params language: files and -S overrides as DVC reads them ----------------------------------------------


def _yaml():
    # DVC's own reader (dvc/utils/serialize/_yaml.py): ruamel's safe loader, YAML 1.2, so `1e-3` is a number and
    # `yes` a string for kdflow as for `dvc exp run`, which writes overrides back to params.yaml with ruamel.
    from ruamel.yaml import YAML

    return YAML(typ="safe")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A params file as plain data, read as DVC reads it."""
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    path = Path(path)
    try:
        raw = _yaml().load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; run from the project root or pass --params") from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {exc.problem}") from None
    except YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; a run needs the sections {', '.join(Params.model_fields)}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


def _unclosed(text: str) -> str | None:
    """A bracket, brace or quote the override leaves open: what Hydra's parser reports in ANTLR's words."""
    closers = {"[": "]", "{": "}"}
    opened: list[str] = []
    quote, escaped = None, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in closers:
            opened.append(char)
        elif char in "]}":
            if not opened or closers[opened.pop()] != char:
                return f"'{char}' closes nothing"
    if quote:
        return f"a {quote} quote is never closed"
    return f"'{opened[-1]}' is never closed" if opened else None


def syntax_problem(text: str, error: Any) -> str:
    """What is wrong with an override Hydra's parser refused (`OverrideParseException`), in plain words."""
    lexer = "LexerNoViableAltException: "
    lines = [line for line in error.message.splitlines()
             if line.strip() and not line.startswith(("Error parsing override", "See https://"))]
    if "=" not in text and not text.startswith("~"):
        return "there is no '='"
    if unclosed := _unclosed(text):
        return unclosed
    if lines[0].startswith(lexer):  # the override again, then a caret under the character the lexer stopped at
        position = lines[1].index("^") - len(lexer)
        return f"unexpected {text[position]!r} at character {position + 1}"
    return lines[0]


def _parse(parser: Any, text: str) -> Any:
    """One `-S` override in Hydra's grammar, as DVC parses it (`OverridesParser.parse_overrides`)."""
    from hydra.errors import OverrideParseException

    try:
        [override] = parser.parse_overrides([text])
    except OverrideParseException as exc:
        raise ConfigError(f"override '{text}' does not parse: {syntax_problem(text, exc)}; -S takes KEY=VALUE in "
                          "Hydra's override grammar, as dvc exp run -S does (quote strings with special characters)"
                          ) from None
    if not override.key_or_group:
        raise ConfigError(f"override '{text}' names no key; -S takes KEY=VALUE, e.g. distill.temperature=8")
    if override.package is not None:
        raise ConfigError(f"override '{text}': '@' names a Hydra config group package; params files have none, "
                          "write KEY=VALUE")
    if override.is_sweep_override():
        raise ConfigError(f"override '{text}' gives several values; -S sets one: write a list in brackets "
                          f"('{override.key_or_group}=[...]'), or vary the key with kdflow sweep --grid")
    return override


def _tagged(node: Any, value: Any) -> type[BaseModel] | None:
    """The member of a tagged union (architectures, data sources) that `value`'s tag picks, if any."""
    if not isinstance(value, Mapping):
        return None
    tag = value.get("arch") or _kind(value)
    members = [member for member in _union_members(node) if tag in _tags(member)]
    return members[0] if members else None


def _refused(config: Mapping, key: str, line: str, source: str) -> str | None:
    """Why the schema would refuse `key` even if the file had it (a typo), in validation's words; else None."""
    node: Any = Params
    value: Any = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        section = _section_of(node) or _tagged(node, value)
        if section is None:
            # A free-form mapping (a custom factory's options) or a section of an unknown kind: nothing to say.
            if get_origin(_unwrap(node)) is dict or _union_members(node):
                return None
            return f"override '{line}': '{'.'.join(parts[:depth])}' holds a value, not a section"
        if part not in section.model_fields:
            return _unknown_key(".".join(parts[:depth + 1]), section, source)
        node = section.model_fields[part].annotation
        value = value.get(part) if isinstance(value, Mapping) else None
    return None


def _apply(config: Any, override: Any, source: str) -> None:
    """One parsed override onto the struct config, with Hydra's semantics (ConfigLoaderImpl
    `_apply_overrides_to_config`, which DVC calls): `key=v` changes a key the file has, `+key=v` adds one,
    `++key=v` sets one either way, `~key` (or `~key=v`, v its current value) deletes one."""
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    line, key, value = override.input_line, override.key_or_group, override.value()
    try:
        current = OmegaConf.select(config, key, throw_on_missing=False)
        if override.is_delete():
            if current is None:
                raise ConfigError(f"override '{line}': {source} has no '{key}' to delete")
            if value is not None and value != current:
                raise ConfigError(f"override '{line}': '{key}' is {current!r}, not {value!r}; "
                                  f"write ~{key} to delete it whatever its value")
            parent, _, last = key.rpartition(".")
            with open_dict(config):
                del (OmegaConf.select(config, parent) if parent else config)[last]
        elif override.is_add() and current is not None and not isinstance(value, (dict, list)):
            raise ConfigError(f"override '{line}': {source} already sets '{key}'; drop the + to change it "
                              f"({line[1:]}), or write ++ to set it either way (+{line})")
        else:
            OmegaConf.update(config, key, value, merge=True, force_add=override.is_add() or override.is_force_add())
    except (ConfigAttributeError, ConfigKeyError) as exc:  # the struct config refuses a key the file lacks
        missing = exc.full_key or key
        raise ConfigError(_refused(config, missing, line, source) or (
            f"override '{line}': {source} has no key '{missing}', so -S cannot change it (nor can dvc exp run -S); "
            f"add it with +{line}")) from None
    except (OmegaConfBaseException, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"override '{line}': {str(exc).splitlines()[0]}") from None


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], source: str = "params.yaml") -> dict[str, Any]:
    """`raw` with `-S` overrides applied as `dvc exp run -S` applies them to params.yaml
    (dvc/utils/hydra.py `apply_overrides`): all parsed, then applied in order onto an OmegaConf struct config,
    and the result turned back into plain data (which resolves `${...}` interpolations, as DVC's does)."""
    if not overrides:
        return raw  # DVC leaves the file as it is
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    parser = OverridesParser.create()
    parsed = [_parse(parser, text) for text in overrides]
    config = OmegaConf.create(raw, flags={"allow_objects": True})
    OmegaConf.set_struct(config, True)
    for override in parsed:
        _apply(config, override, source)
    try:
        return OmegaConf.to_object(config)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {str(exc).splitlines()[0]} (with overrides {', '.join(overrides)})") from None


def format_override(key: str, value: Any) -> str:
    """`key=value` in the grammar `-S` reads, so that it reads back as exactly `value`."""
    return f"{key}={_override_value(value)}"


def _override_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # inf, -inf, nan: the grammar's own words
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if re.fullmatch(r"[A-Za-z_][\w\-./]*", value) and value.lower() not in ("true", "false", "null", "inf", "nan"):
            return value  # a word the grammar reads as this string: `adam`, `backbone.2`
        # Quoted, so `1e-3` stays a string. Inside quotes a backslash only escapes a quote, or another backslash
        # before a quote or the end, so only those runs are doubled.
        return "'" + re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value) + "'"
    if isinstance(value, list):
        return "[" + ", ".join(map(_override_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_override_value(item)}" for key, item in value.items()) + "}"
    raise TypeError(f"no -S form for {value!r}")


def load_params(path: str | Path = "params.yaml", overrides: Sequence[str] = ()) -> Params:
    """Read, override and validate; every section must be there, as the default pipeline runs them all."""
    source = str(path)
    raw = apply_overrides(read_yaml(path), overrides, source)
    missing = [name for name in Params.model_fields if name not in raw]
    errors = [f"{source}: missing {'section' if len(missing) == 1 else 'sections'} "
              f"{', '.join(map(repr, missing))}; a run needs every one of {', '.join(Params.model_fields)}"] if missing else []
    try:
        params = validate(raw, source)
    except ConfigError as exc:
        errors += str(exc).splitlines()
    if errors:
        raise ConfigError("\n".join(errors))
    return params


def dump_params(params: Params) -> str:
    """YAML that `load_params` (and DVC) read back as the same params."""
    stream = io.StringIO()
    writer = _yaml()
    writer.default_flow_style = False
    writer.dump(params.model_dump(mode="json"), stream)
    return stream.getvalue()
