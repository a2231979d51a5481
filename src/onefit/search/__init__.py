"""Multi-objective architecture (and precision) search over a family: a Problem, searchers behind
ask/tell, a study store, and the Pareto front. ``onefit.search`` is the loop over them."""

from onefit.search.base import Searcher, Trial
from onefit.search.family_problem import family_problem
from onefit.search.predictor import PredictorSearch
from onefit.search.n2n import N2NSearch
from onefit.search.loop import SearchError, search
from onefit.search.nsga2 import NSGA2Search
from onefit.search.optuna_nsga2 import OptunaNSGA2Search
from onefit.search.pareto import Front
from onefit.search.problem import Metric, Problem, ProblemError
from onefit.search.random_search import RandomSearch
from onefit.search.study import Study, StudyError
from onefit.search.mcts import TreeSearch

# Names for the command line and benchmarks; a new searcher is one file plus one line here.
SEARCHERS: dict[str, type[Searcher]] = {
    "random": RandomSearch,
    "nsga2": NSGA2Search,
    "optuna_nsga2": OptunaNSGA2Search,
    "linas": PredictorSearch,
    "n2n": N2NSearch,
    "tree": TreeSearch,
}

__all__ = ["Front", "Metric", "N2NSearch", "NSGA2Search", "OptunaNSGA2Search", "PredictorSearch", "Problem",
    "ProblemError", "RandomSearch", "SEARCHERS",
           "SearchError", "Searcher", "Study", "StudyError", "Trial", "TreeSearch", "family_problem", "search"]
