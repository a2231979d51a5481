"""N2N learning: a two-stage recurrent policy, trained with REINFORCE, that removes then shrinks layers.

Ashok et al., "N2N Learning: Network to Network Compression via Policy Gradient Reinforcement
Learning", ICLR 2018. Stage 1, a bidirectional LSTM, reads one token per ``depth`` dimension and picks
its number of layers (a categorical over the choices: a generalised keep/remove); stage 2, an
autoregressive LSTM, reads one token per other dimension (width, heads, rank, kernel, bits: its
position, its kind, the stage-1 decisions and the previous stage-2 action) and picks its choice.
The reward of an arch against the teacher (``space.max()``, always the first ask) is

    R = R_a * R_c**w,   R_c = C (2 - C),   C = 1 - mean_i(cost_i / cost_i(teacher)),

with the first objective the quality (an error, lower is better) and the others the costs (clipped so
C is in [0, 1]; with no cost objective R = R_a). The paper's R_a = acc / acc_teacher becomes
(1 - err) / (1 - err_teacher) while every error told lies in [0, 1], and err_teacher / err once one
does not (a loss), clipped to [0, 2]. Our extension: w, drawn per episode from ``weights`` and fed to
the policy as log w, trades quality for compression so one run yields a front; w = 1 is the paper.
Infeasible trials score -min(violation, 1), failed ones 0. The policy updates every ``batch`` told
episodes that it asked itself, with a per-w exponential moving-average baseline and Adam.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from onefit.cost.latency import torch_threads
from onefit.search.base import Searcher, Trial, failed_values
from onefit.space import KINDS, Arch, Space

_EPS = 1e-12
_EMBED = 8


def _fraction(index: torch.Tensor, size: int) -> torch.Tensor:
    """Choice index -> [0, 1], so inputs do not depend on how many choices a dimension has."""
    return index.float() / max(size - 1, 1)


class _Policy(nn.Module):
    """Stage 1 (bidirectional LSTM over depth dims) then stage 2 (LSTM over the rest), one head per dim."""

    def __init__(self, space: Space, hidden: int):
        super().__init__()
        dims = list(space)
        self.sizes = [len(d.choices) for d in dims]
        self.depth = [i for i, d in enumerate(dims) if d.kind == "depth"]
        self.other = [i for i, d in enumerate(dims) if d.kind != "depth"]
        self.register_buffer("kinds", torch.tensor([KINDS.index(d.kind) for d in dims], dtype=torch.long))
        self.position = nn.Embedding(max(len(dims), 1), _EMBED)
        self.kind = nn.Embedding(len(KINDS), _EMBED)
        token = 2 * _EMBED + 1  # position, kind, log w
        self.stage1 = nn.LSTM(token, hidden, batch_first=True, bidirectional=True)
        self.stage2 = nn.LSTM(token + len(self.depth) + 1, hidden, batch_first=True)  # + depth decisions, prev
        self.heads = nn.ModuleList(nn.Linear(2 * hidden if d.kind == "depth" else hidden, len(d.choices))
                                   for d in dims)

    def _tokens(self, which: list[int], logw: torch.Tensor) -> torch.Tensor:
        idx = torch.tensor(which, dtype=torch.long)
        static = torch.cat([self.position(idx), self.kind(self.kinds[idx])], 1)  # [L, 2E]
        batch, length = logw.shape[0], len(which)
        return torch.cat([static.expand(batch, length, -1), logw.view(batch, 1, 1).expand(batch, length, 1)], 2)

    def forward(self, logw: torch.Tensor, actions: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample archs (``actions`` None) or score given ones: choice indices [B, D] and log-probs [B]."""
        batch = logw.shape[0]
        chosen: dict[int, torch.Tensor] = {}
        logp = torch.zeros(batch)

        def pick(i: int, logits: torch.Tensor) -> torch.Tensor:  # logits [B, n_i] -> log-prob [B]
            logq = torch.log_softmax(logits, 1)
            a = actions[:, i] if actions is not None else \
                torch.multinomial(logq.exp(), 1, generator=generator).squeeze(1)
            chosen[i] = a
            return logq.gather(1, a.unsqueeze(1)).squeeze(1)

        if self.depth:  # the paper's stage 1: each decision sees the whole network, both directions
            out, _ = self.stage1(self._tokens(self.depth, logw))  # [B, L1, 2H]
            for j, i in enumerate(self.depth):
                logp = logp + pick(i, self.heads[i](out[:, j]))
        decided = torch.stack([_fraction(chosen[i], self.sizes[i]) for i in self.depth], 1) if self.depth \
            else torch.zeros(batch, 0)  # [B, L1]
        if self.other:  # stage 2 is autoregressive: each shrink sees the previous one
            base, state, prev = self._tokens(self.other, logw), None, torch.zeros(batch, 1)  # base [B, L2, T]
            for j, i in enumerate(self.other):
                out, state = self.stage2(torch.cat([base[:, j], decided, prev], 1).unsqueeze(1), state)  # [B,1,H]
                logp = logp + pick(i, self.heads[i](out[:, 0]))
                prev = _fraction(chosen[i], self.sizes[i]).unsqueeze(1)
        return torch.stack([chosen[i] for i in range(len(self.sizes))], 1), logp


class N2NSearch(Searcher):
    """N2N's two-stage REINFORCE policy over a space (see the module docstring for the reward).

    Proposals are distinct: a repeat (or an arch that breaks a cheap constraint) is resampled, up to
    ``retries`` draws, then mutated at random until unseen; once the space is exhausted the policy's
    own draw is returned. Tells for archs it did not ask (a resumed study) only feed the teacher
    reference and the dedup set: they have no episode to reinforce.
    """

    def __init__(self, *, seed: int = 0, batch: int = 5, lr: float = 0.01, hidden: int = 32,
                 weights: tuple[float, ...] = (0.25, 1.0, 4.0), decay: float = 0.8, retries: int = 8):
        super().__init__(seed=seed)
        for name, value in (("batch", batch), ("hidden", hidden), ("retries", retries)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"N2NSearch: {name} must be an integer >= 1, got {value!r}")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"N2NSearch: lr must be a number > 0, got {lr!r}")
        if not (isinstance(decay, (int, float)) and 0 <= decay < 1):
            raise ValueError(f"N2NSearch: decay must be a number in [0, 1), got {decay!r}")
        if not weights or not all(isinstance(w, (int, float)) and 0 < w < math.inf for w in weights):
            raise ValueError(f"N2NSearch: weights must be a non-empty tuple of numbers > 0, got {weights!r}")
        self.batch, self.lr, self.hidden, self.retries = batch, float(lr), hidden, retries
        self.weights, self.decay = tuple(float(w) for w in weights), float(decay)

    def setup(self, problem) -> None:
        super().setup(problem)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(self.seed)
            self._policy = _Policy(self.space, self.hidden)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._optimizer = torch.optim.Adam(self._policy.parameters(), lr=self.lr)
        self._seen: set[str] = set()
        self._pending: dict[str, list[tuple[torch.Tensor, float]]] = {}  # key -> asked episodes (actions, w)
        self._done: list[tuple[torch.Tensor, float, Trial]] = []
        self._baseline: dict[float, float] = {}
        self._teacher_asked, self._error_like = False, True  # error-like: every quality told is in [0, 1]
        try:  # objective index -> teacher value: cheap ones known now, the rest once the teacher is told
            cheap = problem.compute(self.space.max(), problem.cheap)
            self._teacher = {problem.objectives.index(n): v for n, v in cheap.items()}
        except Exception:  # a metric that fails on the teacher: fall back to told values
            self._teacher = {}
        self._extreme: dict[int, float] = {}  # best quality / worst costs told: the fallback teacher

    def ask(self) -> Arch:
        teacher = self.space.max()
        if not self._teacher_asked and self.key(teacher) not in self._seen:
            self._teacher_asked = True  # the reference R_a and C are measured against
            self._seen.add(self.key(teacher))
            return teacher
        self._teacher_asked = True
        w = self.rng.choice(self.weights)
        arch, actions = self._propose(w)
        self._seen.add(self.key(arch))
        self._pending.setdefault(self.space.key(arch), []).append((actions, w))  # the exact arch comes back
        return arch

    def _propose(self, w: float) -> tuple[Arch, torch.Tensor]:
        with torch.no_grad():  # draw every retry at once: one forward pass, same generator use each ask
            with torch_threads(1):  # a policy this small only loses to thread hand-offs
                drawn, _ = self._policy(torch.full((self.retries,), math.log(w)), generator=self._generator)
        candidates = [(self._arch(a), a) for a in drawn]  # drawn [retries, D]
        fresh = [c for c in candidates if self.key(c[0]) not in self._seen]
        for arch, actions in fresh:
            if self.problem.cheap_violation(arch) == 0:
                return arch, actions
        if fresh:  # all break a cheap constraint: let the evaluation teach the policy why
            return fresh[0]
        arch = self._mutate(candidates[0][0])
        return (arch, self._indices(arch)) if arch is not None else candidates[0]

    def _mutate(self, arch: Arch) -> Arch | None:
        """A random walk from ``arch`` to an unseen arch (None after 100 steps: space exhausted)."""
        movable = [d for d in self.space if len(d.choices) > 1]
        arch = dict(arch)
        for _ in range(100 if movable else 0):
            dim = self.rng.choice(movable)
            arch[dim.name] = self.rng.choice([c for c in dim.choices if c != arch[dim.name]])
            if self.key(arch) not in self._seen:
                return arch
        return None

    def _arch(self, actions: torch.Tensor) -> Arch:
        return self.space.validate({d.name: d.choices[int(a)] for d, a in zip(self.space, actions)})

    def _indices(self, arch: Arch) -> torch.Tensor:
        return torch.tensor([d.choices.index(arch[d.name]) for d in self.space], dtype=torch.long)

    def tell(self, trial: Trial) -> None:
        key = self.space.key(trial.arch)
        self._seen.add(self.key(trial.arch))
        self._record(trial)
        if self._pending.get(key):  # one of ours: an episode to reinforce
            actions, w = self._pending[key].pop(0)
            self._done.append((actions, w, trial))
            if len(self._done) >= self.batch:
                self._update()

    def _record(self, trial: Trial) -> None:
        if trial.failed or failed_values(trial.values):
            return
        if self.space.validate(trial.arch) == self.space.max():
            self._teacher.update(enumerate(trial.values))
        for i, v in enumerate(trial.values):  # quality: the best told; costs: the largest told
            self._extreme[i] = v if i not in self._extreme else (min if i == 0 else max)(self._extreme[i], v)
        self._error_like = self._error_like and 0.0 <= trial.values[0] <= 1.0

    def _reward(self, trial: Trial, w: float) -> float:
        if trial.violation > 0:
            return -min(trial.violation, 1.0)
        if trial.failed or failed_values(trial.values):
            return 0.0
        quality, *costs = trial.values
        ref = {i: self._teacher.get(i, self._extreme.get(i, v)) for i, v in enumerate(trial.values)}
        if self._error_like:
            r_a = (1.0 - quality) / max(1.0 - ref[0], _EPS)
        else:
            r_a = ref[0] / max(quality, _EPS)
        r_a = min(max(r_a, 0.0), 2.0)
        if not costs:
            return r_a
        c = 1.0 - sum(v / max(ref[i], _EPS) for i, v in enumerate(costs, 1)) / len(costs)
        c = min(max(c, 0.0), 1.0)
        return r_a * (c * (2.0 - c)) ** w

    def _update(self) -> None:
        """One REINFORCE step on the told episodes: loss = -mean((R - b_w) * log pi(arch | w))."""
        actions = torch.stack([a for a, _, _ in self._done])  # [B, D]
        logw = torch.tensor([math.log(w) for _, w, _ in self._done])  # [B]
        advantages = []
        for _, w, trial in self._done:  # per-w baselines: a large w scores lower whatever the arch
            r = self._reward(trial, w)
            b = self._baseline.get(w, r)
            advantages.append(r - b)
            self._baseline[w] = self.decay * b + (1.0 - self.decay) * r
        # log-probs under the current policy: asks made before the last update are slightly off-policy
        with torch_threads(1):
            _, logp = self._policy(logw, actions=actions)
            loss = -(torch.tensor(advantages) * logp).mean()
            self._optimizer.zero_grad()
            loss.backward()
            self._optimizer.step()
        self._done.clear()
