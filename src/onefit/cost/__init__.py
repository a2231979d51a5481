"""What a sub-model costs: counts computed from the plan, latency measured on a runtime or
predicted by a fitted model, and the machine's roofline to judge both against."""

from onefit.cost.counts import count_macs, count_params, costs
from onefit.cost.latency import BACKENDS, Latency, environment, measure_latency
from onefit.cost.latency_model import LatencyModel, spearman
from onefit.cost.roofline import Roofline, machine_roofline, measure_roofline

__all__ = [
    "BACKENDS",
    "Latency",
    "LatencyModel",
    "Roofline",
    "costs",
    "count_macs",
    "count_params",
    "environment",
    "measure_latency",
    "measure_roofline",
    "machine_roofline",
    "spearman",
]
