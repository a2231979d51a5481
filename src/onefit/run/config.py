"""The run config: one TOML file that names the whole job, validated with pydantic.

Every section is optional but ``[model]`` and ``[data]``; an unknown key gets a did-you-mean, a
bad value names its key and what is allowed (``ConfigError``). ``--set section.key=value`` on the
command line overrides one value (the value is TOML: ``train.epochs=2``, ``search.objectives=["error"]``).

>>> config = parse_config({"model": {"zoo": "mlp", "kwargs": {"hidden": 16}}, "data": {"bundled": "digits"},
...                        "train": {"epochs": 2}})
>>> config.train.recipe, config.train.epochs, config.search.searcher
('sortednet', 2, 'linas')
>>> parse_config({"model": {"zoo": "mlp"}, "data": {"bundled": "digits"}, "trian": {}})
Traceback (most recent call last):
...
onefit.run.config.ConfigError: the config is not valid:
  trian: unknown key; did you mean 'train'? (allowed: data, elastic, export, model, pretrain, search, ...)
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

STAGES = ("inspect", "pretrain", "train", "search", "export", "report")


class ConfigError(ValueError):
    """A run config that cannot be used; the message names each bad key and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _import_path(value: str | None) -> str | None:
    if value is not None and (value.count(":") != 1 or not all(value.split(":"))):
        raise ValueError(f"an import path module:function such as mymodels:build, got {value!r}")
    return value


def _registered(value: str, registry, what: str) -> str:
    """``value`` if it is a name in ``registry``, else a ValueError listing the names."""
    if value not in registry:
        raise ValueError(f"{value!r} is not a {what}; choose one of {sorted(registry)}")
    return value


class ModelSection(_Section):
    """Exactly one of ``factory`` (module:function returning an nn.Module), ``zoo`` (a name of
    ``onefit.zoo``) or ``transformers`` (a model folder or name on this machine)."""

    factory: str | None = None
    zoo: str | None = None
    transformers: str | None = None
    transformers_class: str = "AutoModel"  # the transformers Auto class that loads it
    kwargs: dict[str, Any] = Field(default_factory=dict)
    input_shape: list[int] | None = None  # one example input; default: the first test batch's first row

    @field_validator("factory")
    @classmethod
    def _factory(cls, value):
        return _import_path(value)

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, value):
        if value is not None and (not value or any(d < 1 for d in value)):
            raise ValueError(f"positive dimensions such as [1, 1, 8, 8], got {value}")
        return value

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("factory", "zoo", "transformers") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"name the model by exactly one of factory, zoo or transformers; got "
                             f"{', '.join(given) or 'none'}")
        if self.zoo is not None:
            from onefit.zoo import MODELS

            if self.zoo not in MODELS:
                raise ValueError(f"zoo: {self.zoo!r} is not in onefit's zoo; choose one of {sorted(MODELS)}")
        return self


class DataSection(_Section):
    """``bundled`` (one of ``onefit.data.DATASETS``) or ``factory`` (module:function returning
    ``(train, test)`` loaders, or a dict with ``train``, ``test`` and optionally ``validation`` and
    ``calibration``); without validation data a share of the training data is held out for the search."""

    bundled: str | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    validation_fraction: float = Field(0.2, gt=0, lt=1)

    @field_validator("factory")
    @classmethod
    def _factory(cls, value):
        return _import_path(value)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.bundled is None) == (self.factory is None):
            raise ValueError("name the data by exactly one of bundled or factory")
        if self.bundled is not None:
            from onefit.data import DATASETS

            if self.bundled not in DATASETS:
                raise ValueError(f"bundled: {self.bundled!r} is not a bundled data set; choose one of {sorted(DATASETS)}")
        return self


class TaskSection(_Section):
    """The task (``onefit.tasks.TASKS``); ``distillation`` learns the original model's outputs
    (``kind``: kl for logits, cosine for embeddings, at ``temperature``)."""

    name: str = "classification"
    kind: str = "kl"
    temperature: float = Field(1.0, gt=0)
    inputs: int = Field(1, ge=1)  # distillation: how many of a batch's first items are the model's inputs

    @field_validator("name")
    @classmethod
    def _name(cls, value):
        from onefit.tasks import TASKS

        return _registered(value, TASKS, "task")


class PretrainSection(_Section):
    """Plain training of the full model before it becomes a family; 0 epochs: it comes trained."""

    epochs: int = Field(0, ge=0)
    lr: float = Field(3e-3, gt=0)


class ElasticSection(_Section):
    """``onefit.ElasticConfig``'s fields, checked by it; ``sort``: sort channels by importance first,
    by ``importance``: the weights' L1 norm (``l1``), activations (``activation``, Minitron) or
    first-order Taylor scores (``taylor``) on the calibration data; ``order_depth``: rank a
    transformer's layers by block importance on the calibration data, so a shallower sub-model
    drops the least important layers, not the last ones; ``reduce_range``: ``auto`` (the default)
    trains 8-bit weights on the range the int8 files of this CPU get (ONNX Runtime's reduced range
    without VNNI, ``onefit.runtimes.cpu.int8_weights``), true or false fixes it (to train here for
    another CPU)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    sort: bool = True
    importance: Literal["l1", "activation", "taylor"] = "l1"
    order_depth: bool = False
    reduce_range: bool | Literal["auto"] = "auto"

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        data = handler(self)
        if not data.get("order_depth"):  # off and unset are one config: run folders made before it stay valid
            data.pop("order_depth", None)
        for key, default in (("importance", "l1"), ("reduce_range", "auto")):
            if data.get(key) == default:
                data.pop(key, None)
        return data

    @model_validator(mode="after")
    def _elastic(self):
        self.elastic_config()  # raises ValueError naming the field
        return self

    def elastic_config(self):
        from onefit.config import ElasticConfig

        fields = dict(self.model_extra or {})
        known = set(ElasticConfig.__dataclass_fields__)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: {_unknown(unknown[0], sorted(known | {'sort', 'importance', 'order_depth'}))}")
        if self.reduce_range != "auto":
            return ElasticConfig(**fields, reduce_range=self.reduce_range)
        config = ElasticConfig(**fields)
        if 8 not in config.weight_bits():
            return config
        from onefit.runtimes.cpu import int8_weights

        return dataclasses.replace(config, reduce_range=int8_weights()[0])


class TrainSection(_Section):
    """The family's training: a recipe of ``onefit.train.RECIPES`` and its config's fields."""

    recipe: str = "sortednet"
    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)  # the family starts from a trained model: 3e-3 cost its largest sub-model a point
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("recipe")
    @classmethod
    def _recipe(cls, value):
        from onefit.train import RECIPES

        return _registered(value, RECIPES, "recipe")


class SearchSection(_Section):
    searcher: str = "linas"
    budget: int = Field(60, ge=1)
    objectives: list[str] = Field(default_factory=lambda: ["error", "macs", "params"])
    constraints: dict[str, float] = Field(default_factory=dict)  # {"params": 50000}: at most
    seed: int | None = None  # default: the run's seed

    @field_validator("searcher")
    @classmethod
    def _searcher(cls, value):
        from onefit.search import SEARCHERS

        return _registered(value, SEARCHERS, "searcher")

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value):
        if not value or "error" not in value:
            raise ValueError(f"the objectives must include 'error' (the task's metric), got {value}")
        return value


class TargetsSection(_Section):
    """Where the exported models will run: each latency is measured there."""

    # onefit.runtimes' names, eager, compile; streaming: one frame at a time (onefit.continual), per-step cost
    runtimes: list[str] = Field(default_factory=lambda: ["onnxruntime"])
    precisions: list[Literal["fp32", "int8"]] = Field(default_factory=lambda: ["fp32", "int8"])
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64])
    threads: int | None = Field(None, ge=1)  # default: torch's thread count
    repeats: int = Field(30, ge=1)

    @field_validator("runtimes")
    @classmethod
    def _runtimes(cls, value):
        from onefit.runtimes import RUNTIMES

        allowed = [*sorted(RUNTIMES), "eager", "compile", "streaming"]
        unknown = [r for r in value if r not in allowed]
        if unknown or not value:
            raise ValueError(f"{unknown[0] if unknown else 'none'!r} is not a runtime; choose from {allowed}")
        return value

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, value):
        if not value or any(b < 1 for b in value):
            raise ValueError(f"positive batch sizes such as [1, 64], got {value}")
        return value


class ExportSection(_Section):
    """What to export: the front (at most ``max_models`` points spread along it) and/or the best
    sub-model under each budget (``{params = 50000}``, ``{macs = 1e6, params = 2e4}``, ...)."""

    front: bool = True
    max_models: int = Field(6, ge=1)
    budgets: list[dict[str, float]] = Field(default_factory=list)


class RunConfig(_Section):
    seed: int = 0
    model: ModelSection
    data: DataSection
    task: TaskSection = Field(default_factory=TaskSection)
    pretrain: PretrainSection = Field(default_factory=PretrainSection)
    elastic: ElasticSection = Field(default_factory=ElasticSection)
    train: TrainSection = Field(default_factory=TrainSection)
    search: SearchSection = Field(default_factory=SearchSection)
    targets: TargetsSection = Field(default_factory=TargetsSection)
    export: ExportSection = Field(default_factory=ExportSection)

    @model_validator(mode="after")
    def _consistent(self):
        if self.task.name == "distillation" and self.pretrain.epochs:
            raise ValueError("pretrain.epochs: the distillation task learns the original model's outputs; "
                             "pretraining the original on them would teach it nothing (set pretrain.epochs = 0)")
        return self

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


def _unknown(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    shown = ", ".join(allowed[:6]) + (", ..." if len(allowed) > 6 else "")
    return f"unknown key; {hint}(allowed: {shown})"


def _fields(location: tuple) -> list[str]:
    """The keys allowed where ``location`` (a pydantic error location) points."""
    model: Any = RunConfig
    for part in location[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def _message(error: dict) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "the config"
    if error["type"] == "extra_forbidden":
        return f"{where}: {_unknown(str(error['loc'][-1]), _fields(error['loc']))}"
    message = error["msg"].removeprefix("Value error, ")
    shown = "" if error["type"] in ("missing", "value_error") else f" (got {error.get('input')!r})"
    return f"{where}: {message}{shown}"


def parse_config(data: dict, source: str = "the config") -> RunConfig:
    """A RunConfig from a dict (a parsed TOML file), or a ConfigError listing every problem."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        lines = "\n".join(f"  {_message(e)}" for e in err.errors())
        raise ConfigError(f"{source} is not valid:\n{lines}") from None


def apply_override(data: dict, item: str) -> dict:
    """``data`` with ``section.key=value`` set (``value`` parsed as TOML, else taken as a string).

    >>> apply_override({"train": {"epochs": 10}}, "train.epochs=2")
    {'train': {'epochs': 2}}
    """
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"an override is section.key=value, e.g. train.epochs=2; got {item!r}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
    node[parts[-1]] = value
    return data


def load_config(path: str | Path, overrides: list[str] = ()) -> tuple[RunConfig, dict]:
    """The validated config of the TOML file ``path`` with ``overrides`` applied, and the raw dict."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no config file {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from None
    for item in overrides:
        apply_override(data, item)
    return parse_config(data, str(path)), data
