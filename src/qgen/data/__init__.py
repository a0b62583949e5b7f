"""Datasets: the registry of real datasets, their offline preparation, and calibration sets built from them."""
