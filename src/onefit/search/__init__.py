"""Multi-objective search over a family's archs: a Problem, searchers behind ask/tell, a study
store, and the Pareto front."""

from onefit.search.base import Searcher, Trial
from onefit.search.problem import Metric, Problem
from onefit.search.random_search import RandomSearch

__all__ = ["Metric", "Problem", "RandomSearch", "Searcher", "Trial"]
