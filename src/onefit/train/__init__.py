"""Training recipes (a config plus a public ``step``) and ``train``, the loop around a step."""

from onefit.train.bn import recalibrate_bn
from onefit.train.diffquant import DifferentiableQuantizationConfig, DifferentiableQuantizationRecipe, learn_points
from onefit.train.loop import DataError, evaluate, train, train_plain
from onefit.train.ordered_rank import OrderedRankConfig, OrderedRankRecipe
from onefit.train.quantized import QuantizedDistillationConfig, QuantizedDistillationRecipe
from onefit.train.sampler import SandwichSampler, uniform_bits
from onefit.train.sorted import SortedNetConfig, SortedNetRecipe
from onefit.train.trp import TRPConfig, TRPRecipe

__all__ = [
    "DataError",
    "DifferentiableQuantizationConfig",
    "DifferentiableQuantizationRecipe",
    "OrderedRankConfig",
    "OrderedRankRecipe",
    "QuantizedDistillationConfig",
    "QuantizedDistillationRecipe",
    "SandwichSampler",
    "SortedNetConfig",
    "SortedNetRecipe",
    "TRPConfig",
    "TRPRecipe",
    "evaluate",
    "learn_points",
    "recalibrate_bn",
    "train",
    "train_plain",
    "uniform_bits",
]
