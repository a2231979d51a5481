"""Importance: which channels and blocks matter most, so that nested sub-models keep them.

- ``sort_(family, importance)`` reorders every width and heads group, most important first,
  keeping the function (``sort``); by the weights' L1 norm (``L1Importance``), by activations
  on calibration data (``ActivationImportance``, Minitron) or by first-order Taylor scores
  (``TaylorImportance``) (``calibrated``).
- ``order_depth_(family, data)`` ranks a transformer's blocks (``depth``).

>>> import torch, onefit
>>> family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (torch.randn(2, 1, 8, 8),))
>>> data = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))]
>>> sort_(family, TaylorImportance(data)) is family
True
"""

from onefit.importance.calibrated import ActivationImportance, TaylorImportance
from onefit.importance.depth import block_importance, order_depth_
from onefit.importance.sort import Importance, L1Importance, sort_

__all__ = ["ActivationImportance", "Importance", "L1Importance", "TaylorImportance", "block_importance",
           "order_depth_", "sort_"]
