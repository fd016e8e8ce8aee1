"""Training program for jsar: losses (pure functions), false-negative mining, objectives, distributed helpers, trainer.

Inference code never imports this package; it may import `jsa_retrieval` but never `indexing`.
"""
