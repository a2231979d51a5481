"""A latency model for search: a regression over arch features, fitted to measured sub-models.

latency ~ intercept + sum_k c_k * feature_k with every c_k >= 0 (more work never makes a model
faster), fitted on relative error (each sample weighted by 1 / latency^2), because a search cares
about ratios between small and large sub-models alike. Features are the plan's counts: MACs,
parameters, active layers (each one costs a kernel launch) and peak activation bytes. (MACs split
by spatial resolution fitted the training sub-models better and held-out ones worse: with a few
dozen noisy measurements, fewer features generalise better.)

>>> import torch, onefit
>>> family = onefit.elasticize(onefit.zoo.mlp(hidden=64, layers=2), (torch.randn(2, 1, 8, 8),))
>>> archs = family.space.nested_chain()
>>> measured_ms = [0.01 + 1e-6 * arch_features(family, a)["macs"] for a in archs]  # a machine of 1 GMAC/s
>>> model = LatencyModel.fit(family, archs, measured_ms, backend="onnxruntime", batch=1)
>>> round(model.predict(family, family.space.max()) / measured_ms[-1], 2)
1.0
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np

from onefit.cost.counts import costs


FEATURES = ("macs", "params", "layers", "activation_bytes")


def arch_features(family, arch: Mapping) -> dict[str, float]:
    total = costs(family, arch)
    return {k: float(total[k]) for k in FEATURES}


def _features(family, archs: Sequence[Mapping], names: Sequence[str]) -> np.ndarray:
    rows = [arch_features(family, a) for a in archs]
    return np.array([[row.get(f, 0.0) for f in names] for row in rows], dtype=np.float64)


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    ra, rb = _ranks(np.asarray(a)), _ranks(np.asarray(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass
class LatencyModel:
    backend: str
    batch: int
    intercept: float
    coef: list[float]
    features: tuple[str, ...] = ()
    scale: list[float] = field(default_factory=list)  # feature scaling used at fit time
    fit_error: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, family, archs: Sequence[Mapping], latencies_ms: Sequence[float], *, backend: str, batch: int):
        from sklearn.linear_model import LinearRegression

        names = tuple(sorted({k for a in archs for k in arch_features(family, a)}))
        if len(archs) != len(latencies_ms) or len(archs) < len(names) + 2:
            raise ValueError(f"need matching archs and latencies, at least {len(names) + 2}; "
                             f"got {len(archs)} and {len(latencies_ms)}")
        x, y = _features(family, archs, names), np.asarray(latencies_ms, dtype=np.float64)
        scale = x.max(0).clip(min=1.0)
        reg = LinearRegression(positive=True).fit(x / scale, y, sample_weight=1.0 / y**2)
        model = cls(backend, batch, float(reg.intercept_), reg.coef_.tolist(), names, scale.tolist())
        model.fit_error = model.error(family, archs, latencies_ms)
        return model

    def predict_many(self, family, archs: Sequence[Mapping]) -> np.ndarray:
        x = _features(family, archs, self.features)
        return self.intercept + (x / np.asarray(self.scale)) @ np.asarray(self.coef)

    def predict(self, family, arch: Mapping) -> float:
        return float(self.predict_many(family, [arch])[0])

    def error(self, family, archs: Sequence[Mapping], latencies_ms: Sequence[float]) -> dict:
        """Mean absolute percentage error and Spearman rank correlation against measurements."""
        y = np.asarray(latencies_ms, dtype=np.float64)
        pred = self.predict_many(family, archs)
        return {"mape": float(np.mean(np.abs(pred - y) / y)), "spearman": spearman(pred, y), "n": len(y)}

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> "LatencyModel":
        return cls(**{**data, "features": tuple(data["features"])})
