"""Training program for jsar: losses (pure functions), false-negative mining, objectives, recipes (one per method
of `jsa_retrieval.models.MODELS`), the trainer, validation and presence calibration, and the image and audio trunk
caches. The distributed helpers it uses live in `jsa_retrieval.distributed`, which indexing shares.

Inference code never imports this package. It imports `jsa_retrieval` only, never `indexing` or `evaluation`
(tests/test_imports.py; docs/house.md).
"""
