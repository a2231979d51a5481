"""Elastic layers: each holds the largest weights and computes with a prefix of its units.

Only a layer that *produces* channels is told its active output width (``active_out``); every
layer reads its active input width from the tensor it receives, so a width set on a producer
flows through norms, depthwise convolutions and consumers without further bookkeeping.
"""

from onefit.elastic.attention import ElasticMultiheadAttention
from onefit.elastic.conv import ElasticConv
from onefit.elastic.depth import ElasticModuleList, ElasticSequential
from onefit.elastic.embedding import ElasticEmbedding
from onefit.elastic.hf_conv1d import ElasticHFConv1D
from onefit.elastic.linear import ElasticLinear
from onefit.elastic.norm import ElasticBatchNorm, ElasticLayerNorm
from onefit.elastic.mamba import ElasticMambaMixer
from onefit.elastic.registry import elastic_type_for, to_elastic

__all__ = [
    "ElasticBatchNorm",
    "ElasticConv",
    "ElasticEmbedding",
    "ElasticHFConv1D",
    "ElasticLayerNorm",
    "ElasticLinear",
    "ElasticMambaMixer",
    "ElasticModuleList",
    "ElasticMultiheadAttention",
    "ElasticSequential",
    "elastic_type_for",
    "to_elastic",
]
