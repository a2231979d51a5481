"""Training: recipes (a config plus a public ``step``, registered in ``RECIPES``) and ``train``,
the one loop around any recipe's step."""

from onefit.tasks import DataError, evaluate
from onefit.train.adapted import AdapterRecipe
from onefit.train.bn import recalibrate_bn
from onefit.train.chain import Chain, ProgressiveDistillationConfig, ProgressiveDistillationRecipe, distill_chain
from onefit.train.differentiable_quantization import DifferentiableQuantizationConfig, DifferentiableQuantizationRecipe, learn_points
from onefit.train.loop import train, train_plain
from onefit.train.noise import GradientNoise
from onefit.train.ordered_rank import OrderedRankConfig, OrderedRankRecipe
from onefit.train.plain import PlainConfig, PlainRecipe
from onefit.train.progressive import ProgressiveShrinkingConfig, ProgressiveShrinkingRecipe
from onefit.train.quantized import QuantizedDistillationConfig, QuantizedDistillationRecipe
from onefit.train.recipe import RECIPES, Recipe, recipe_from, register_recipe
from onefit.train.sampler import LadderSampler, SandwichSampler, uniform_bits
from onefit.train.sorted import SortedNetConfig, SortedNetRecipe
from onefit.train.trp import TRPConfig, TRPRecipe

__all__ = [
    "RECIPES",
    "AdapterRecipe",
    "Chain",
    "DataError",
    "DifferentiableQuantizationConfig",
    "DifferentiableQuantizationRecipe",
    "GradientNoise",
    "OrderedRankConfig",
    "OrderedRankRecipe",
    "PlainConfig",
    "PlainRecipe",
    "ProgressiveDistillationConfig",
    "ProgressiveDistillationRecipe",
    "ProgressiveShrinkingConfig",
    "ProgressiveShrinkingRecipe",
    "QuantizedDistillationConfig",
    "QuantizedDistillationRecipe",
    "Recipe",
    "LadderSampler",
    "SandwichSampler",
    "SortedNetConfig",
    "SortedNetRecipe",
    "TRPConfig",
    "TRPRecipe",
    "distill_chain",
    "evaluate",
    "learn_points",
    "recalibrate_bn",
    "recipe_from",
    "register_recipe",
    "train",
    "train_plain",
    "uniform_bits",
]
