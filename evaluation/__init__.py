"""Evaluation: evaluators that run a model or a store through the metrics of `jsa_retrieval.metrics` (localization,
retrieval, source presence, generalisation across splits, second-source recordings), reports and figures, the
paper's experiment and each method's schedule, `jsar demo`, and the benchmarks `jsar bench` runs (`bench/`).
One-off probes live in `probes/`, outside the wheel (docs/house.md, "Probes").
"""
