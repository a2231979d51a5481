"""A family saved to a folder, loaded again: ``onefit.load`` and ``restore_``.

Loading rebuilds the model (from the recorded zoo factory, or a model you pass), elasticizes it
the same way, and checks the space, the hashes, every key and every shape (``onefit.checkpoint``
reads and checks the folder itself).

>>> import tempfile, torch, onefit
>>> family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (torch.randn(2, 1, 8, 8),))
>>> folder = tempfile.mkdtemp()
>>> family.save(folder)
>>> load(folder).space == family.space  # a zoo model rebuilds from its factory
True
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from onefit.checkpoint import CheckpointError, build_from_source, example_inputs_of, read_manifest, read_tensors
from onefit.config import ElasticConfig
from onefit.cost.latency_model import LatencyModel
from onefit.family import elasticize, is_restriction
from onefit.space import Space


def load(directory, model: nn.Module | None = None, *, trust_code: bool = False):
    """Load a family saved with ``Family.save``. ``model`` is an untrained instance of the original
    architecture; leave it out when the family records a zoo factory. A family that records any
    other factory is rebuilt from it only with ``trust_code=True``, since that imports and runs it."""
    manifest = read_manifest(directory)
    model = model if model is not None else build_from_source(manifest.get("source"), trust_code)
    try:
        config = ElasticConfig(**manifest["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{directory}: the manifest's config is not an ElasticConfig: {err}") from err
    return restore_(elasticize(model, example_inputs_of(manifest), config), directory)


def restore_(family, directory):
    """Load the weights, history and source saved in ``directory`` into ``family`` in place,
    after checking that it has the saved space and exactly the saved tensors."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    try:
        saved = Space.from_json(manifest["space"])
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{directory}: the manifest's space is not a list of dimensions: {err}") from err
    if family.space != saved and not is_restriction(saved, family.space):
        raise CheckpointError(f"{directory}: the model given does not rebuild the saved space; is it the same architecture?")
    weights = read_tensors(directory, manifest["weights"])
    tied = manifest.get("tied") or {}
    if not isinstance(tied, dict) or not all(isinstance(v, str) and v in weights for v in tied.values()):
        raise CheckpointError(f"{directory}: the manifest's tied weights do not name saved tensors: {tied!r:.200}")
    weights.update({alias: weights[name] for alias, name in tied.items()})
    expected = family.module.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{directory}: weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {wrong[:5]}"
        )
    _restore_reduce_range_(family, manifest["config"].get("reduce_range", False), directory)
    family.space = saved  # training may have dropped choices (progressive shrinking, TRP): family.restrict_
    family.module.load_state_dict(weights)
    family.source, family.history = manifest.get("source"), manifest.get("history") or []
    family.space_history = manifest.get("space_history") or []
    try:
        family.rank_blocks_(manifest.get("depth_order") or {})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{directory}: the manifest's depth order does not fit the model: {err}") from err
    try:
        family.latency_models = {k: LatencyModel.from_json(v) for k, v in (manifest.get("latency_models") or {}).items()}
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{directory}: a latency model in the manifest is damaged: {err}") from err
    return family


def _restore_reduce_range_(family, trained: object, directory) -> None:
    """The range the 8-bit weights trained on travels with them: a run resumed on a CPU whose
    ``reduce_range = "auto"`` resolves the other way keeps the one the weights were trained on."""
    if not isinstance(trained, bool):
        raise CheckpointError(f"{directory}: the manifest's reduce_range must be true or false, got {trained!r}")
    if trained is family.config.reduce_range:
        return
    try:
        family.config = dataclasses.replace(family.config, reduce_range=trained)
    except ValueError as err:
        raise CheckpointError(f"{directory}: the saved family's 8-bit range does not fit this one: {err}") from err
    for module in family.module.modules():
        if hasattr(module, "reduce_range"):  # set by the bits dimension (onefit.dims.bits)
            module.reduce_range = trained
