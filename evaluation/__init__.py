"""Evaluation: localization and retrieval metrics, evaluators that run a model or store through them, and reports."""
