"""Training program for jsar: losses (pure functions), false-negative mining, objectives, recipes (one per method),
validation, the image and audio trunk caches, and the trainer. Distributed helpers live in
`jsa_retrieval.distributed`, which inference shares.

Inference code never imports this package; it may import `jsa_retrieval` but never `indexing`.
"""
