"""nxmiformer: N:M semi-structured sparsity + low-bit integer quantization for Transformer
encoders, learned with ADMM and STE-based QAT, with a search for heterogeneous per-layer plans.

For notebooks and scripts: ``from nxmiformer.api import task, search, train`` (:mod:`nxmiformer.api`)."""

__version__ = "0.1.0"
