"""Tracing and channel coupling: which channels must shrink together, and which must stay."""

from onefit.graph.coupling import analyze
from onefit.graph.plan import Group, LayerPlan, Plan, StagePlan

__all__ = ["Group", "LayerPlan", "Plan", "StagePlan", "analyze"]
