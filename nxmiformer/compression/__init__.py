"""Pure compression math and model surgery: N:M masks, integer fake-quantization with STE,
specs and plans, ratio accounting, ADMM state, and applying a plan to a Hugging Face encoder.

Knows nothing of training loops, data, Ray or file formats (those are :mod:`nxmiformer.export`).
"""

from .accounting import CONVENTIONS, DENSE_BITS, RatioTarget, compression_ratio, dense_bits, module_bits, ratio_table
from .admm import ADMM
from .layer import CompressedLinear, compress_, compressed_modules, current_plan, harden_, project, to_dense_
from .masks import nm_mask
from .modules import (
    ALL_COMPONENTS, COMPONENTS, FUSED_COMPONENTS, CompressibleModule, compressible_modules, encoder_blocks,
)
from .quant import fake_quantize, fake_quantize_activations, quantize_to_int, weight_scales
from .spec import DENSE, CompressionPlan, LayerSpec

__all__ = [
    "ADMM",
    "ALL_COMPONENTS",
    "COMPONENTS",
    "FUSED_COMPONENTS",
    "CONVENTIONS",
    "DENSE_BITS",
    "RatioTarget",
    "CompressedLinear",
    "CompressibleModule",
    "CompressionPlan",
    "DENSE",
    "LayerSpec",
    "compress_",
    "compressed_modules",
    "compressible_modules",
    "compression_ratio",
    "current_plan",
    "dense_bits",
    "encoder_blocks",
    "fake_quantize",
    "fake_quantize_activations",
    "harden_",
    "module_bits",
    "nm_mask",
    "project",
    "quantize_to_int",
    "ratio_table",
    "to_dense_",
    "weight_scales",
]
