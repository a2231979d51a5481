"""Structure analysis: which channels must shrink together, and which must stay.

``analyze`` reads Hugging Face transformers (attention blocks, Mamba blocks) off their modules
(torch.fx cannot trace them) and traces everything else with torch.fx; all produce the same
``Plan``.
"""

from onefit.elastic.ties import tied_parameters
from onefit.graph.coupling import trace_plan
from onefit.graph.mamba import mamba_plan
from onefit.graph.trace import TraceError
from onefit.graph.plan import Group, LayerPlan, Plan, StagePlan
from onefit.graph.transformers import LAYOUTS, encoder_plan, unknown_blocks


def analyze(model, example_inputs: tuple) -> Plan:
    """The width groups, bound layers and depth stages of ``model`` on ``example_inputs``."""
    plan = encoder_plan(model, example_inputs) or mamba_plan(model, example_inputs)
    if plan is None:
        try:
            plan = trace_plan(model, example_inputs)
        except TraceError as err:
            blocks = unknown_blocks(model)
            if blocks is None:
                raise
            raise TraceError(
                f"{type(model).__name__}: its blocks ({blocks[1]} at {blocks[0]}) match no layout of "
                f"onefit.graph.transformers.LAYOUTS ({', '.join(sorted(LAYOUTS))}), and torch.fx cannot trace it; "
                "nothing is sliced. Add a Layout naming the block's attention, projections and FFN "
                "(LAYOUTS['mine'] = Layout(...)) from your code") from err
    plan.tied = tied_parameters(model)
    return plan


__all__ = ["Group", "LayerPlan", "Plan", "StagePlan", "TraceError", "analyze", "encoder_plan", "trace_plan"]
