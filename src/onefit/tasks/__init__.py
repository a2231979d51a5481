"""Tasks: the batch format, the loss and the metric, passed to training, evaluation, the search's
error objective and export's accuracy check. One file a task, registered by name.

>>> {'classification', 'dense', 'distillation', 'language_modeling'} <= set(TASKS)
True
"""

from onefit.tasks.base import TASKS, DataError, Task, evaluate, first_output, register_task
from onefit.tasks.classification import ClassificationTask
from onefit.tasks.dense import DensePredictionTask
from onefit.tasks.distillation import DistillationTask
from onefit.tasks.language_modeling import LanguageModelingTask

__all__ = ["TASKS", "ClassificationTask", "DataError", "DensePredictionTask", "DistillationTask",
           "LanguageModelingTask", "Task", "evaluate", "first_output", "register_task"]
