"""Multi-objective architecture (and precision) search over a family: a Problem, searchers behind
ask/tell, a study store, and the Pareto front. ``onefit.search`` is the loop over them."""

from onefit.nas.base import Searcher, Trial
from onefit.nas.family_problem import family_problem
from onefit.nas.linas import PredictorSearch
from onefit.nas.n2n import N2NSearch
from onefit.nas.loop import SearchError, search
from onefit.nas.nsga2 import NSGA2Search
from onefit.nas.pareto import Front
from onefit.nas.problem import Metric, Problem
from onefit.nas.random_search import RandomSearch
from onefit.nas.study import Study, StudyError
from onefit.nas.tree import TreeSearch

# Names for the command line and benchmarks; a new searcher is one file plus one line here.
SEARCHERS: dict[str, type[Searcher]] = {
    "random": RandomSearch,
    "nsga2": NSGA2Search,
    "linas": PredictorSearch,
    "n2n": N2NSearch,
    "tree": TreeSearch,
}

__all__ = ["Front", "Metric", "N2NSearch", "NSGA2Search", "PredictorSearch", "Problem", "RandomSearch", "SEARCHERS",
           "SearchError", "Searcher", "Study", "StudyError", "Trial", "TreeSearch", "family_problem", "search"]
