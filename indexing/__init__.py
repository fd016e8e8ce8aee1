"""Retrieval indexing: the HDF5 embedding store and the FAISS indexes built over it.

Kept apart from the model so that a store can be written, merged, indexed and searched without torch (`embed`,
which runs the model over clips, and `engine`, which queries with it, are the modules that import torch):
`store` holds vectors + ids + classes + paths + the model fingerprint (written resumably, read lazily in
chunks), `index_choice` is the pure rule that picks a FAISS factory string from size, dimension and memory
budget, and `faiss_index` trains, fills, saves, loads, places on GPUs and searches the indexes.
"""
