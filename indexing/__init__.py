"""Retrieval indexing: the HDF5 embedding store, the indexes built over it, the search `Engine` and the service.

The store and the indexes work without torch, so a store can be written, merged, indexed and searched by a
process that never loads the model: `store` (vectors + ids + classes + paths + the model fingerprint, written
resumably, read lazily in chunks), `index_choice` (the pure rule that picks a FAISS factory string from size,
dimension and memory budget), `faiss_index` (train, fill, save, load, place on GPUs, search), and the other back
ends, `scann_index` (ScaNN, when named) and `milvus_backend` (Milvus collections). The modules that run the model
import torch: `embed` (a data set into the store), `engine` (queries by sound or picture, and their maps) and
`service/` (`jsar serve`). Ideas measured and not chosen: `experimental/`. Map: docs/house.md.
"""
