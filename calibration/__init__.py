"""Bayesian calibration of pbpk models (NumPyro) — not implemented yet (issue 6)."""
