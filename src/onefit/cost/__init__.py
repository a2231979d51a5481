"""What a sub-model costs: parameters and multiply-accumulates, computed without running it."""

from onefit.cost.counts import count_macs, count_params, costs
from onefit.cost.latency import measure_latency

__all__ = ["costs", "count_macs", "count_params", "measure_latency"]
