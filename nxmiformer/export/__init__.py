"""What a user deploys: the bit-packed model (safetensors; ``load_packed``), its ONNX export on
ONNX Runtime's integer kernels, and int8 weight-only serving in PyTorch.

Reads hardened models from :mod:`nxmiformer.compression`; knows nothing of training or Ray.
"""

from .pack import (
    PackReport, PackedModuleInfo, decode_weight, encode_weight, load_packed, pack_bits, pack_dir, pack_model,
    unpack_bits, unpack_dir,
)
from .onnx import OnnxClassifier, export_onnx, export_onnx_dir
from .serve import Int8WeightOnlyLinear, to_int8_weight_only_

__all__ = [
    "Int8WeightOnlyLinear",
    "OnnxClassifier",
    "PackReport",
    "PackedModuleInfo",
    "decode_weight",
    "encode_weight",
    "export_onnx",
    "export_onnx_dir",
    "load_packed",
    "pack_bits",
    "pack_dir",
    "pack_model",
    "to_int8_weight_only_",
    "unpack_bits",
    "unpack_dir",
]
