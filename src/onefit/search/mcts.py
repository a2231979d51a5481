"""Monte Carlo tree search over a space's dimensions, after DeepArchitect's MCTS searcher.

Negrinho & Gordon (2017), "DeepArchitect: Automatically Designing and Training Deep
Architectures", search a space given as data with random search, MCTS and SMBO. Their MCTS is
UCT: level ``d`` of the tree chooses dimension ``d``; an ask walks down by UCB1,

    UCT(child) = mean score(child) + exploration * sqrt(2 ln n(parent) / n(child)),

an unvisited child scoring infinity (so it is expanded, picked at random among the unvisited),
then rolls the remaining dimensions out uniformly at random; a tell backs the trial's score up
the path. ``exploration`` defaults to DeepArchitect's ``exploration_bonus=1.0``.

Differences, and why:

* Every told arch's whole path is in the tree (DeepArchitect keeps only the tree part), so the
  tree is a function of the told trials alone: history replayed through ``tell`` after a resume
  rebuilds it, whoever asked those archs.
* Score (our problems are multi-objective, all minimised): among feasible trials told so far,
  ``1 - rank / (max rank + 1)`` with ``rank`` the Pareto (non-dominated sorting) rank, so the
  current front scores 1 and each layer behind it less. Ranks, unlike hypervolume contributions,
  are scale-free (no normalisation to guess) and grade dominated trials too (their hypervolume
  contribution is 0 however close they are). They change as trials arrive, so nodes keep the
  indices of their trials and means are recomputed from the current scores. Infeasible trials
  score below the worst feasible one, less the more they violate; failed ones score 0.
* Pending asks (asked, not yet told) count as visits scoring 0, a virtual loss, so that several
  asks before any tell spread out. An ask never picks a child whose subtree holds no arch unseen
  (asked or told), so it proposes a fresh arch while one remains; after that, repeats.
"""

from __future__ import annotations

import math

import numpy as np

from onefit.search.base import Searcher, Trial, failed_values
from onefit.space import Arch


class _Node:
    """Statistics of one prefix of choices."""

    __slots__ = ("children", "pending", "seen", "trials")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.trials: list[int] = []  # indices of the told trials below, into TreeSearch._scores
        self.pending = 0  # asks below not yet told (virtual losses)
        self.seen = 0  # distinct archs below asked or told


def _visits(node: _Node | None) -> int:
    return 0 if node is None else len(node.trials) + node.pending


class TreeSearch(Searcher):
    """UCT over the space's dimensions in order (DeepArchitect's MCTS); see the module docstring."""

    def __init__(self, *, exploration: float = 1.0, seed: int = 0):
        super().__init__(seed=seed)
        if isinstance(exploration, bool) or not isinstance(exploration, (int, float)) \
                or not math.isfinite(exploration) or exploration <= 0:
            raise ValueError(f"TreeSearch: exploration must be a finite number > 0, got {exploration!r}")
        self.exploration = float(exploration)

    def setup(self, problem) -> None:
        super().setup(problem)
        self._dims = list(self.space)
        # capacity[d]: archs below a node at depth d, to know when a subtree has nothing unseen left
        self._capacity = [math.prod(len(d.choices) for d in self._dims[i:]) for i in range(len(self._dims) + 1)]
        self._root = _Node()
        self._seen: set[str] = set()
        self._pending: dict[str, int] = {}
        self._trials: list[Trial] = []
        self._scores: list[float] = []
        self._stale = False  # scores are refreshed lazily, once per ask, not once per tell

    # -- ask ------------------------------------------------------------------------------------
    def ask(self) -> Arch:
        space = self.space  # raises a clear error before setup
        self._refresh_scores()
        repeats = self._root.seen >= self._capacity[0]  # every arch seen: repeats are all that is left
        node: _Node | None = self._root
        path: list[int] = []
        rollout = False
        for depth, dim in enumerate(self._dims):
            options = [i for i in range(len(dim.choices))
                       if repeats or not self._full(node, i, depth + 1)]
            fresh = [i for i in options if _visits(node.children.get(i) if node else None) == 0]
            if rollout or fresh:  # expand an unvisited child, then roll out at random
                rollout = True
                i = self.rng.choice(fresh or options)
            else:
                i = self._best_child(node, options)
            path.append(i)
            node = node.children.get(i) if node else None
        arch = {d.name: d.choices[i] for d, i in zip(self._dims, path)}
        key = space.key(arch)
        self._pending[key] = self._pending.get(key, 0) + 1
        for n in self._walk(path):
            n.pending += 1
        self._mark_seen(key, path)
        return arch

    def _full(self, node: _Node | None, i: int, depth: int) -> bool:
        child = node.children.get(i) if node else None
        return child is not None and child.seen >= self._capacity[depth]

    def _best_child(self, node: _Node, options: list[int]) -> int:
        """UCB1 over ``options`` (all visited); ties drawn at random, as DeepArchitect does."""
        log_n = math.log(_visits(node))
        best: list[int] = []
        top = -math.inf
        for i in options:
            child = node.children[i]
            n = _visits(child)
            uct = sum(self._scores[t] for t in child.trials) / n + self.exploration * math.sqrt(2 * log_n / n)
            if uct > top:
                best, top = [i], uct
            elif uct == top:
                best.append(i)
        return self.rng.choice(best)

    # -- tell -----------------------------------------------------------------------------------
    def tell(self, trial: Trial) -> None:
        key = self.space.key(trial.arch)
        arch = self.space.validate(trial.arch)
        path = [d.choices.index(arch[d.name]) for d in self._dims]
        if self._pending.get(key, 0) > 0:  # our own ask coming back: lift its virtual loss
            self._pending[key] -= 1
            for n in self._walk(path):
                n.pending -= 1
        index = len(self._trials)
        self._trials.append(trial)
        self._scores.append(0.0)
        for n in self._walk(path):
            n.trials.append(index)
        self._mark_seen(key, path)
        self._stale = True

    def _walk(self, path: list[int]):
        """The nodes from the root along ``path``, created as needed."""
        node = self._root
        yield node
        for i in path:
            node = node.children.setdefault(i, _Node())
            yield node

    def _mark_seen(self, key: str, path: list[int]) -> None:
        if key not in self._seen:
            self._seen.add(key)
            for n in self._walk(path):
                n.seen += 1

    # -- scores ---------------------------------------------------------------------------------
    def _refresh_scores(self) -> None:
        if not self._stale:
            return
        self._stale = False
        width = len(self.problem.objectives)
        usable = [not t.failed and len(t.values) == width and failed_values(t.values) is None
                  for t in self._trials]  # a hand-made Trial may carry NaNs: treat it as failed
        feasible = [i for i, t in enumerate(self._trials) if usable[i] and t.violation == 0]
        floor = 1.0  # the worst feasible score; infeasible trials stay below it
        if feasible:
            import moocore

            ranks = moocore.pareto_rank(np.array([self._trials[i].values for i in feasible], dtype=float))
            layers = int(ranks.max()) + 1
            for i, r in zip(feasible, ranks):
                self._scores[i] = 1.0 - int(r) / layers
            floor = 1.0 / layers
        for i, t in enumerate(self._trials):
            if not usable[i]:
                self._scores[i] = 0.0
            elif t.violation != 0:
                violation = t.violation if math.isfinite(t.violation) and t.violation > 0 else math.inf
                self._scores[i] = 0.5 * floor / (1.0 + violation)
