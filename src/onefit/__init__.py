"""onefit: one trained network, a family of nested sub-models, the one that fits.

Public names only. Heavy optional dependencies (onnx, transformers, ...) are imported where used.
"""

from onefit.checkpoint import CheckpointError
from onefit.saved import load
from onefit.cost import costs, count_macs, count_params
from onefit.inspect import Coverage, inspect
from onefit.export import ExportError, ExportReport, export
from onefit.config import ElasticConfig
from onefit.family import Family, elasticize
from onefit.importance import (ActivationImportance, L1Importance, TaylorImportance, block_importance, order_depth_,
                               sort_)
from onefit.select import BudgetError, largest_within
from onefit.streaming import NotStreamable, Streaming, continual
from onefit.adapters import AdapterError, Adapters, adapt, load_adapters
from onefit.space import Arch, ArchError, Dimension, Space
from onefit import data, zoo
from onefit.search import (Front, N2NSearch, NSGA2Search, PredictorSearch, Problem, RandomSearch, TreeSearch,
                        family_problem, search)
from onefit.train import (
    AdapterRecipe,
    DifferentiableQuantizationConfig,
    QuantizedDistillationConfig,
    QuantizedDistillationRecipe,
    OrderedRankConfig,
    OrderedRankRecipe,
    TRPConfig,
    TRPRecipe,
    LadderSampler,
    SandwichSampler,
    SortedNetConfig,
    SortedNetRecipe,
    evaluate,
    recalibrate_bn,
    train,
    learn_points,
    train_plain,
)

__version__ = "0.1.0"

__all__ = [
    "AdapterError",
    "AdapterRecipe",
    "Adapters",
    "NotStreamable",
    "Streaming",
    "adapt",
    "continual",
    "load_adapters",
    "Arch",
    "ArchError",
    "BudgetError",
    "CheckpointError",
    "Coverage",
    "Dimension",
    "DifferentiableQuantizationConfig",
    "ElasticConfig",
    "ExportError",
    "ExportReport",
    "Family",
    "Front",
    "N2NSearch",
    "OrderedRankConfig",
    "OrderedRankRecipe",
    "TRPConfig",
    "TRPRecipe",
    "NSGA2Search",
    "PredictorSearch",
    "ActivationImportance",
    "L1Importance",
    "TaylorImportance",
    "Problem",
    "QuantizedDistillationConfig",
    "QuantizedDistillationRecipe",
    "RandomSearch",
    "LadderSampler",
    "SandwichSampler",
    "SortedNetConfig",
    "SortedNetRecipe",
    "Space",
    "TreeSearch",
    "costs",
    "count_macs",
    "count_params",
    "elasticize",
    "family_problem",
    "search",
    "evaluate",
    "export",
    "inspect",
    "largest_within",
    "learn_points",
    "load",
    "recalibrate_bn",
    "sort_",
    "order_depth_",
    "block_importance",
    "train",
    "train_plain",
    "data",
    "zoo",
]
