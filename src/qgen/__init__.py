"""qgen: how well does a quantized LLM generalize, and how much does that depend on its calibration data?

The job flow is model -> calibration -> quantize -> evaluate -> record; each step is a subpackage.
"""

__version__ = "0.1.0"
