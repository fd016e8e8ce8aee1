"""Cross-modal retrieval evaluation: class-level Recall@K of audio→image and image→audio (gallery: every item of
the other modality, own pair included; a hit shares the query's class).

`evaluate_retrieval` scores an embedded store through its FAISS indexes, i.e. the numbers a user of
`jsar query` gets, and (with `check_exact`) against an exact brute-force ranking of the same vectors, so an
approximate index's cost in recall is measured rather than assumed. `recall_from_vectors` is the exact,
in-memory path used when no index exists (`jsar eval compare`).

Protocol (Senocak et al., ICCV 2023): the gallery is every item of the other modality, the query's own pair
included; a query hits at K when any of its top K shares its class. Items with an unknown class ('') are
not queries (equal placeholders would count as hits) but stay in the gallery, where they can never be hits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jsa_retrieval import metrics

DIRECTIONS = ("audio_to_image", "image_to_audio")


@dataclass
class DirectionRecall:
    """One direction's results: Recall@K for the report's ks, per query class, and K = 1..curve_max_k."""

    recall: dict[int, float]
    by_category: dict[str, dict[int, float]]
    curve: dict[int, float]


@dataclass
class ExactCheck:
    """Index vs exact ranking of one direction: the exact Recall@K, the fraction of queries whose hit@K is
    the same under both, and recall(index) - recall(exact)."""

    recall: dict[int, float]
    hit_agreement: dict[int, float]
    recall_difference: dict[int, float]


@dataclass
class RetrievalReport:
    """A store's retrieval scores through its indexes; `to_dict` is what report.json holds."""

    index_dir: str
    model_name: str
    fingerprint: str
    checkpoint: str
    config: dict[str, Any]
    index: dict[str, Any]
    n_items: int
    n_evaluated: int
    n_skipped_unlabelled: int
    gallery_size: int
    n_categories: int
    ks: tuple[int, ...]
    directions: dict[str, DirectionRecall]
    exact: dict[str, ExactCheck] | None = None
    notes: list[str] = field(default_factory=list)

    kind = "retrieval"

    @property
    def audio_to_image(self) -> dict[int, float]:
        return self.directions["audio_to_image"].recall

    @property
    def image_to_audio(self) -> dict[int, float]:
        return self.directions["image_to_audio"].recall

    def to_dict(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in (
            "index_dir", "model_name", "fingerprint", "checkpoint", "config", "index", "n_items", "n_evaluated",
            "n_skipped_unlabelled", "gallery_size", "n_categories", "notes")}
        values["kind"] = self.kind
        values["ks"] = list(self.ks)
        values["directions"] = {name: vars(result) for name, result in self.directions.items()}
        values["exact"] = None if self.exact is None else {name: vars(check) for name, check in self.exact.items()}
        return values


# --------------------------------------------------------------------------------------------------------------
# Pure ranking and scoring
# --------------------------------------------------------------------------------------------------------------

def _known(labels: Sequence[Any]) -> np.ndarray:
    """Boolean (N,): which labels name a class (not None, not '')."""
    return np.array([label is not None and str(label) != "" for label in labels], dtype=bool)


def _label_array(labels: Sequence[Any]) -> np.ndarray:
    return np.array(["" if label is None else str(label) for label in labels], dtype=object)


def _recall_up_to(ranked_labels: np.ndarray, query_labels: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Recall@K where K may exceed the ranking's width: the top K of a smaller gallery is the whole gallery."""
    width = ranked_labels.shape[1]
    effective = {int(k): min(int(k), width) for k in ks}
    scores = metrics.recall_at_k(ranked_labels, query_labels, sorted(set(effective.values())))
    return {k: scores[effective[k]] for k in effective}


def score_ranking(ranked: np.ndarray, query_labels: Sequence[Any], gallery_labels: Sequence[Any],
                  ks: Sequence[int] = (1, 5, 10), curve_max_k: int = 10) -> DirectionRecall:
    """Recall@K of ranked gallery rows (Q, K') for labelled queries; -1 rows (an index returning fewer hits
    than asked) are misses. by_category uses metrics.recall_by_category on the same ranked labels."""
    gallery = np.append(_label_array(gallery_labels), "")  # row -1 reads the trailing '' (never a hit)
    ranked_labels = gallery[np.where(ranked < 0, len(gallery) - 1, ranked)]
    queries = _label_array(query_labels)
    width = ranked_labels.shape[1]
    effective = {int(k): min(int(k), width) for k in ks}
    categories = metrics.recall_by_category(ranked_labels, queries, sorted(set(effective.values())))
    by_category = {str(label): {k: values[effective[k]] for k in effective} for label, values in categories.items()}
    return DirectionRecall(recall=_recall_up_to(ranked_labels, queries, ks), by_category=by_category,
                           curve=_recall_up_to(ranked_labels, queries, range(1, curve_max_k + 1)))


def recall_from_vectors(audio_vectors: np.ndarray, image_vectors: np.ndarray, labels: Sequence[Any],
                        ks: Sequence[int] = (1, 5, 10), curve_max_k: int = 10) -> dict[str, DirectionRecall]:
    """Exact in-memory retrieval over paired vectors (N, d) with class labels (N,): both directions.

    Labelled items are the queries; every item is in the gallery. Raises when no item is labelled.
    """
    from indexing.faiss_index import exact_top_k  # the one exact search, beside the indexes it checks

    known = _known(labels)
    if not known.any():
        raise ValueError("no item has a class label: class-level Recall@K needs labels")
    depth = max(max(ks), curve_max_k)
    results = {}
    for name, queries, gallery in (("audio_to_image", audio_vectors, image_vectors),
                                   ("image_to_audio", image_vectors, audio_vectors)):
        ranked = exact_top_k([(0, np.asarray(gallery))], np.asarray(queries)[known], depth)
        results[name] = score_ranking(ranked, _label_array(labels)[known], labels, ks, curve_max_k)
    return results


def compare_rankings(index_ranked: np.ndarray, exact_ranked: np.ndarray, query_labels: Sequence[Any],
                     gallery_labels: Sequence[Any], ks: Sequence[int]) -> ExactCheck:
    """How far an index's ranking is from the exact one, in the terms Recall@K is computed in."""
    gallery = np.append(_label_array(gallery_labels), "")
    queries = _label_array(query_labels)[:, None]

    def hits(ranked: np.ndarray, k: int) -> np.ndarray:
        top = ranked[:, :k]
        return (gallery[np.where(top < 0, len(gallery) - 1, top)] == queries).any(axis=1)

    exact_recall, agreement, difference = {}, {}, {}
    for k in ks:
        index_hits, exact_hits = hits(index_ranked, int(k)), hits(exact_ranked, int(k))
        exact_recall[int(k)] = float(exact_hits.mean())
        agreement[int(k)] = float((index_hits == exact_hits).mean())
        difference[int(k)] = float(index_hits.mean() - exact_hits.mean())
    return ExactCheck(recall=exact_recall, hit_agreement=agreement, recall_difference=difference)


# --------------------------------------------------------------------------------------------------------------
# The evaluator over a store and its indexes
# --------------------------------------------------------------------------------------------------------------

def evaluate_retrieval(index_dir: str | Path, ks: Sequence[int] = (1, 5, 10), check_exact: bool = True,
                       curve_max_k: int = 10, gpu: bool | None = None) -> RetrievalReport:
    """Class-level Recall@K of both directions through the FAISS indexes of INDEX_DIR (`jsar eval retrieval`).

    Every labelled store row is a query, searched in one batch per direction with k = max(ks, curve_max_k)
    (GPU indexes take k <= 2048). With `check_exact` the same queries are also ranked exactly against all
    vectors (`faiss_index.exact_top_k`, reading the store chunk by chunk; Q x N x d multiply-adds), and the
    report says how often the index's hit@K agrees with the exact one and by how much its recall differs.
    """
    from indexing.faiss_index import exact_top_k, open_indexes  # FAISS only when an index is evaluated

    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive cut-offs, got {ks}")
    depth = max(max(ks), curve_max_k)
    indexes = open_indexes(Path(index_dir), gpu=gpu)
    store = indexes.store
    try:
        labels = _label_array(store.labels())
        known = _known(labels)
        if not known.any():
            raise ValueError(f"no row of the store in {index_dir} has a class label: class-level Recall@K needs "
                             "labels (VGG-SS class, labels.csv, or AVSBench category folders)")
        rows = np.flatnonzero(known)
        query_labels = labels[rows]
        directions: dict[str, DirectionRecall] = {}
        index_ranked: dict[str, np.ndarray] = {}
        for name, query_field, search in (("audio_to_image", "audio_vectors", indexes.audio_to_image),
                                          ("image_to_audio", "image_vectors", indexes.image_to_audio)):
            _, ranked = search(store.read_rows(query_field, rows), depth)
            index_ranked[name] = ranked
            directions[name] = score_ranking(ranked, query_labels, labels, ks, curve_max_k)
        exact = None
        if check_exact:
            exact = {}
            for name, query_field, gallery_field in (("audio_to_image", "audio_vectors", "image_vectors"),
                                                     ("image_to_audio", "image_vectors", "audio_vectors")):
                exact_ranked = exact_top_k(store.iter_chunks(gallery_field), store.read_rows(query_field, rows), depth)
                exact[name] = compare_rankings(index_ranked[name], exact_ranked, query_labels, labels, ks)
        choice = indexes.info.get("choice", {})
        return RetrievalReport(
            index_dir=str(index_dir), model_name=store.meta.model_name, fingerprint=store.meta.fingerprint,
            checkpoint=store.meta.checkpoint, config=store.meta.config,
            index={"factory": choice.get("factory"), "search_params": choice.get("search_params", {}),
                   "faiss_version": indexes.info.get("faiss_version")},
            n_items=len(store), n_evaluated=int(rows.size), n_skipped_unlabelled=int(len(store) - rows.size),
            gallery_size=len(store), n_categories=int(len(set(query_labels.tolist()))), ks=ks,
            directions=directions, exact=exact,
        )
    finally:
        store.close()
