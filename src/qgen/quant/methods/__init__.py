"""Quantization methods, one file each; importing this package registers every method found here."""

import importlib
import pkgutil

from qgen.quant.methods.base import METHODS, QuantMethod, SubsetContext, build, method_steps, register

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "QuantMethod", "SubsetContext", "build", "method_steps", "register"]
