"""What a run config names, built: the model, the data splits, the example input, the task, the
family. A ``Job`` builds each once and names the config key in every error.

A config given to ``onefit run`` is the user's own instruction, so the code it names is imported
(``trusted``); a run folder read back by ``onefit train RUN`` etc. names only onefit's own
factories unless told ``--trust-code`` (``onefit.trust``).

>>> from onefit.run.config import parse_config
>>> job = Job(parse_config({"model": {"zoo": "mlp", "kwargs": {"hidden": 8, "layers": 1}},
...                         "data": {"bundled": "digits"}}))
>>> [tuple(x.shape) for x in job.example_inputs], len(job.splits.validation.dataset)
([(1, 1, 8, 8)], 287)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable

import torch
from torch import nn

from onefit.run.config import RunConfig


class JobError(ValueError):
    """What a config names cannot be built or does not fit; the message names the key."""


@dataclass
class Splits:
    train: Iterable  # the family trains on this
    validation: Iterable  # the search selects on this
    calibration: Iterable  # batch-norm statistics and int8 ranges
    test: Iterable  # the reported figures (never selected on)


def _check_loader(data, key: str) -> Iterable:
    try:
        iter(data)
    except TypeError:
        raise JobError(f"{key}: expected an iterable of batches (a DataLoader or a list), got {type(data).__name__}") from None
    return data


class Job:
    def __init__(self, config: RunConfig, *, trusted: bool = True, from_folder: bool = False,
                 storage: str | None = None, study: str = "onefit", share: bool = False, claim_timeout_s: float = 120.0):
        # from_folder: the config was read back from a run folder, not given by the caller. The
        # search's study (storage, study, share, claim_timeout_s): where it is kept and whether
        # other workers share it; how the job runs, never recorded (a URL may hold a password)
        self.config, self.trusted, self.from_folder = config, trusted, from_folder
        self.storage, self.study, self.share, self.claim_timeout_s = storage, study, share, claim_timeout_s

    def _resolve(self, spec: str, key: str):
        from onefit.trust import bundled, import_path, resolve

        try:
            if self.from_folder or bundled(spec):
                return resolve(spec, what=key, trusted=self.trusted)  # warns before importing foreign code
            return import_path(spec, key)  # the caller's own config: imported as asked
        except ValueError as err:
            raise JobError(f"{key}: {err}") from None

    def _call(self, factory, kwargs: dict, key: str) -> Any:
        try:
            return factory(**kwargs)
        except Exception as err:
            raise JobError(f"{key}: the factory raised {type(err).__name__}: {err}") from err

    def build_model(self) -> nn.Module:
        """A fresh instance of the model the config names (``[model]``)."""
        section = self.config.model
        if section.transformers is not None:
            return self._transformers(section)
        spec = f"onefit.zoo:{section.zoo}" if section.zoo is not None else section.factory
        factory = self._resolve(spec, "model.factory")
        with torch.random.fork_rng():  # the same initial weights every time the model is built
            torch.manual_seed(self.config.seed)
            model = self._call(factory, section.kwargs, f"model ({spec})")
        if not isinstance(model, nn.Module):
            raise JobError(f"model.factory: {spec} returned a {type(model).__name__}, not a torch.nn.Module")
        return model

    def _transformers(self, section) -> nn.Module:
        try:
            import transformers
        except ImportError:
            raise JobError("model.transformers: needs the transformers package (pip install 'onefit[hf]')") from None
        auto = getattr(transformers, section.transformers_class, None)
        if auto is None or not hasattr(auto, "from_pretrained"):
            raise JobError(f"model.transformers_class: {section.transformers_class!r} is not a transformers class "
                           "with from_pretrained (e.g. AutoModel, AutoModelForSequenceClassification)")
        try:  # nothing is downloaded: a folder, or a model already in the local cache
            return auto.from_pretrained(section.transformers, local_files_only=True, **section.kwargs).eval()
        except Exception as err:
            raise JobError(f"model.transformers: cannot load {section.transformers!r} from this machine: {err}") from err

    @cached_property
    def source(self) -> dict | None:
        """How ``onefit.load`` rebuilds the model: the factory and its arguments."""
        section = self.config.model
        if section.transformers is not None:
            return None
        spec = f"onefit.zoo:{section.zoo}" if section.zoo is not None else section.factory
        return {"factory": spec, "kwargs": section.kwargs}

    @cached_property
    def splits(self) -> Splits:
        section = self.config.data
        if section.bundled is not None:
            from onefit.data import DATASETS

            spec, factory = f"onefit.data:{section.bundled}", DATASETS[section.bundled]
            kwargs = {"seed": self.config.seed, **section.kwargs}
        else:
            spec, kwargs = section.factory, section.kwargs
            factory = self._resolve(spec, "data.factory")
        made = self._call(factory, kwargs, f"data ({spec})")
        if isinstance(made, dict):
            missing = [k for k in ("train", "test") if k not in made]
            unknown = sorted(set(made) - {"train", "validation", "calibration", "test"})
            if missing or unknown:
                raise JobError(f"data.factory: {spec} returned a dict with keys {sorted(made)}; it needs 'train' and "
                               "'test', and may have 'validation' and 'calibration'")
        elif isinstance(made, (tuple, list)) and len(made) == 2:
            made = {"train": made[0], "test": made[1]}
        else:
            raise JobError(f"data.factory: {spec} returned a {type(made).__name__}; it must return (train, test) "
                           "loaders or a dict {'train': ..., 'test': ..., 'validation': ..., 'calibration': ...}")
        made = {k: _check_loader(v, f"data ({spec}) {k}") for k, v in made.items()}
        train = made["train"]
        if "validation" not in made:
            from onefit.data import validation_split

            if not hasattr(train, "dataset"):
                raise JobError(f"data: {spec} gives no validation data and its training data is not a DataLoader to "
                               "hold a share out of; return {'train', 'validation', 'test'} loaders")
            train, made["validation"] = validation_split(train, section.validation_fraction, seed=self.config.seed)
        return Splits(train, made["validation"], made.get("calibration", train), made["test"])

    def _task(self, teacher):
        from onefit.tasks import TASKS, DistillationTask

        section = self.config.task
        if section.name == "distillation":
            return DistillationTask(teacher, kind=section.kind, temperature=section.temperature, n_inputs=section.inputs)
        return TASKS[section.name]()

    @cached_property
    def task(self):
        """The task the config names; ``distillation`` learns the original model's outputs."""
        return self._task(self.teacher if self.config.task.name == "distillation" else None)

    @cached_property
    def teacher(self) -> nn.Module:
        """The original model, frozen: the distillation task's teacher."""
        return self.build_model().eval().requires_grad_(False)

    @cached_property
    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """``model.input_shape`` as random values, or the first row of the first test batch."""
        shape = self.config.model.input_shape
        if shape is not None:
            return (torch.randn(*shape, generator=torch.Generator().manual_seed(self.config.seed)),)
        first = next(iter(self.splits.test), None)
        if first is None:
            raise JobError("data: the test data yields no batch")
        probe = self._task(None)
        try:
            inputs = probe.inputs(first)
        except Exception:
            raise JobError(f"data: a test batch is a {type(first).__name__}; the {probe.name} task needs "
                           f"{probe.batch_format}") from None
        return tuple(x[:1] for x in inputs)

    def check_data(self, model: nn.Module) -> None:
        """Every split's first batch fits the example input and the task (the key is named)."""
        from onefit.tasks import DataError
        from onefit.train.loop import output_size

        try:
            outputs = output_size(model, self.example_inputs, self.task)
        except Exception as err:
            raise JobError(f"model: a forward pass on the example input {[tuple(x.shape) for x in self.example_inputs]} "
                           f"failed: {type(err).__name__}: {err}") from err
        for name in ("train", "validation", "calibration", "test"):
            batch = next(iter(getattr(self.splits, name)), None)
            if batch is None:
                raise JobError(f"data: the {name} data yields no batch")
            try:
                self.task.check(batch, self.example_inputs, outputs)
            except DataError as err:
                raise JobError(f"data ({name}): {err}") from None

    def family(self, model: nn.Module | None = None):
        """The model the config names as a family (``[elastic]``), its source recorded."""
        from onefit.family import elasticize

        model = model if model is not None else self.build_model()
        try:
            family = elasticize(model, self.example_inputs, self.config.elastic.elastic_config())
        except ValueError as err:
            raise JobError(f"elastic: {err}") from err
        family.source = self.source
        return family

