"""Quantization: fake-quant grids, the block-by-block engine, and one small file per method in methods/."""
