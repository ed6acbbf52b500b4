"""Evaluation that needs no torch: conformal thresholds, detection rates, the novelty reference."""
