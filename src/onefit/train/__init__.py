"""Training recipes (a config plus a public ``step``) and ``train``, the loop around a step."""

from onefit.train.bn import recalibrate_bn
from onefit.train.loop import DataError, evaluate, train, train_plain
from onefit.train.sampler import SandwichSampler
from onefit.train.sorted import SortedNetConfig, SortedNetRecipe

__all__ = [
    "DataError",
    "SandwichSampler",
    "SortedNetConfig",
    "SortedNetRecipe",
    "evaluate",
    "recalibrate_bn",
    "train",
    "train_plain",
]
