"""nxmiformer: N:M semi-structured sparsity + low-bit integer quantization for Transformer
encoders, learned with ADMM and STE-based QAT, with a search for heterogeneous per-layer plans."""

__version__ = "0.1.0"
