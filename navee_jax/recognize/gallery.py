"""The gallery: reference embeddings of enrolled articles, their prototypes, the calibrated "unknown"
threshold, and the fingerprint of the model + preprocessing that made them. Pure NumPy / JAX on
embeddings; `navee_jax.recognize.api.Recognizer` turns images into embeddings.

Order and ties (what makes predictions reproducible and equal to the evaluation suite's classifiers):
reference images keep the order they were enrolled in, and articles the order of their first enrolment.
"nn" ranks an article by its nearest reference image, equal distances going to the earlier image (the
suite's 1-NN rule); "prototype" ranks articles by the distance to the mean of their reference embeddings,
equal distances going to the earlier article (the suite's smallest-label rule). A gallery with its method's
own `distance` (a verification network's -log p(same); `Recognizer` sets it) ranks by that instead of the
Euclidean distance, searched exactly, with the same order and ties. Removing an article keeps
the order of the others, so adding articles one at a time and removing some gives the same gallery as
enrolling the remaining ones at once.

Enrolling photos that are already in the gallery adds nothing (`enrolled_copies`): a reference image with
the bytes of an enrolled one is skipped, as a second copy within one enrolled folder is, so that enrolling
a folder in parts gives the gallery of enrolling it at once.

On disk a gallery is a folder: `gallery.json` (articles, fingerprint, calibration) and `gallery.npz`
(embeddings, article of each image, image references, SHA-1 of each image's bytes), no pickle.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from navee_jax.errors import UserError
from navee_jax.fingerprint import difference
from navee_jax.distances import pairwise_distances
from navee_jax.losses.registry import Distance
from navee_jax.recognize.calibrate import far_threshold, rates
from navee_jax.recognize.search import ExactIndex, FaissIndex

MODES = ("nn", "prototype")
INDEXES = ("exact", "faiss")  # exact chunked search, or FAISS IVF (optional, approximate; search.FaissIndex)
FORMAT_VERSION = 1


@jax.jit
def _segment_means(embeddings: jax.Array, segments: jax.Array, counts: jax.Array) -> jax.Array:
    sums = jax.ops.segment_sum(embeddings, segments, num_segments=counts.shape[0])
    return sums / jnp.maximum(counts, 1)[:, None].astype(embeddings.dtype)


_squared = jax.jit(lambda x, y: pairwise_distances(x, y, "squared"))
_OWN_CHUNK = 256  # queries scored at once by a gallery's own distance


def fingerprint_difference(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """'key: A in the gallery, B here (n keys differ)' for the first differing key, or None."""
    found = difference(saved, now, ignore=("checkpoint",))
    if found is None:
        return None
    k, was, got, count = found
    where = (f" (gallery from {saved.get('checkpoint')}, model from {now.get('checkpoint')})"
             if k == "weights_sha256" else "")
    return f"{k} is {was!r} in the gallery but {got!r} here{where}; {count} key(s) differ"


class Gallery:
    """Reference embeddings (N, D) with their articles; see the module docstring for order and ties."""

    def __init__(self, dim: int, fingerprint: dict[str, Any], distance: Distance | None = None):
        """`distance`: the method's own ranking (None: Euclidean), not saved with the gallery: the model
        that loads it supplies it, and `fingerprint` names the parameters it came from."""
        self.fingerprint = fingerprint
        self.distance = distance
        self.embeddings = np.zeros((0, dim), np.float32)
        self.image_article = np.zeros((0,), np.int64)  # index into `articles` per reference image
        self.articles: list[str] = []
        self.refs: list[str] = []  # where each reference image came from (path or a description)
        self.digests: list[str] = []  # SHA-1 of each reference image's file ("": not known, e.g. an array)
        self.calibration: dict[str, Any] | None = None
        self._prototypes: np.ndarray | None = None
        self._indexes: dict[tuple[str, str], ExactIndex | FaissIndex] = {}  # built on first search

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def add(self, embeddings: np.ndarray, labels: Sequence[str], refs: Sequence[str] | None = None,
            digests: Sequence[str] | None = None) -> None:
        """Appends reference images of new or already enrolled articles (`digests`: SHA-1 of each image's
        bytes, for `enrolled_copies`; "" or None where unknown). No check for images already enrolled."""
        embeddings = np.asarray(embeddings, np.float32)
        labels = [str(label) for label in labels]
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim or len(embeddings) != len(labels):
            raise UserError(f"enroll: {len(labels)} labels for embeddings of shape {embeddings.shape}; "
                            f"expected one label per (n, {self.dim}) embedding")
        if not np.isfinite(embeddings).all():
            raise UserError("enroll: embeddings contain NaN/inf")
        refs = list(refs) if refs is not None else [f"enrolled[{len(self) + i}]" for i in range(len(labels))]
        digests = list(digests) if digests is not None else [""] * len(labels)
        if len(refs) != len(labels) or len(digests) != len(labels):
            raise UserError(f"enroll: {len(labels)} labels but {len(refs)} refs and {len(digests)} digests")
        index = {a: i for i, a in enumerate(self.articles)}
        for label in labels:
            if label not in index:
                index[label] = len(self.articles)
                self.articles.append(label)
        self.embeddings = np.concatenate([self.embeddings, embeddings])
        self.image_article = np.concatenate([self.image_article, np.array([index[x] for x in labels], np.int64)])
        self.refs += [str(r) for r in refs]
        self.digests += [str(d) for d in digests]
        self._prototypes, self._indexes = None, {}

    def enrolled_copies(self, labels: Sequence[str], digests: Sequence[str], refs: Sequence[str]) -> list[str | None]:
        """For each candidate reference image (its article, SHA-1 of its bytes, path): why it must not be
        added, or None. "already enrolled": a reference of the same article has the same bytes, or, for
        references stored without a digest (galleries written before digests were kept, arrays), the same
        path. "duplicate": its bytes are enrolled under another article; skipped like the second copy in one
        folder (`folder_catalogue`), so that enrolling in parts gives the gallery of enrolling at once."""
        by_digest: dict[str, dict[str, str]] = {}  # digest -> {article: first reference with those bytes}
        by_path: set[tuple[str, str]] = set()  # (article, absolute path) of references without a digest
        for a, ref, digest in zip(self.image_article.tolist(), self.refs, self.digests):
            if digest:
                by_digest.setdefault(digest, {}).setdefault(self.articles[a], ref)
            else:
                by_path.add((self.articles[a], os.path.abspath(ref)))
        out: list[str | None] = []
        for label, digest, ref in zip(labels, digests, refs):
            same_bytes = by_digest.get(digest, {}) if digest else {}
            if label in same_bytes:
                out.append(f"already enrolled: same bytes as {same_bytes[label]}")
            elif same_bytes:
                article, first = next(iter(same_bytes.items()))
                out.append(f"duplicate: same bytes as {first} (enrolled as article {article!r})")
            elif (label, os.path.abspath(ref)) in by_path:
                out.append("already enrolled: same path and article")
            else:
                out.append(None)
        return out

    def remove(self, articles: Sequence[str]) -> None:
        """Removes every reference image of `articles`; an article that is not enrolled is an error."""
        missing = [a for a in articles if a not in self.articles]
        if missing:
            raise UserError(f"remove: article(s) {missing[:5]} are not enrolled ({len(self.articles)} are)")
        gone = np.isin(np.arange(len(self.articles)), [self.articles.index(a) for a in articles])
        new_index = np.cumsum(~gone) - 1
        keep = ~gone[self.image_article]
        self.embeddings = self.embeddings[keep]
        self.image_article = new_index[self.image_article[keep]]
        self.refs = [r for r, k in zip(self.refs, keep) if k]
        self.digests = [d for d, k in zip(self.digests, keep) if k]
        self.articles = [a for a, g in zip(self.articles, gone) if not g]
        self._prototypes, self._indexes = None, {}

    @property
    def prototypes(self) -> np.ndarray:
        """(articles, D) mean reference embedding of each article."""
        if self._prototypes is None:
            counts = np.bincount(self.image_article, minlength=len(self.articles))
            self._prototypes = np.asarray(_segment_means(jnp.asarray(self.embeddings),
                                                         jnp.asarray(self.image_article, jnp.int32),
                                                         jnp.asarray(counts, jnp.int32)))
        return self._prototypes

    def _index(self, mode: str, index: str) -> ExactIndex | FaissIndex:
        if (mode, index) not in self._indexes:
            rows = self.prototypes if mode == "prototype" else self.embeddings
            self._indexes[mode, index] = ExactIndex(rows) if index == "exact" else FaissIndex(rows)
        return self._indexes[mode, index]

    def distances(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(Q, R) distances of queries to rows: the method's own, or Euclidean."""
        if self.distance is not None:
            return np.asarray(self.distance(jnp.asarray(queries, jnp.float32), jnp.asarray(rows, jnp.float32)))
        return np.sqrt(np.asarray(_squared(jnp.asarray(queries, jnp.float32), jnp.asarray(rows, jnp.float32))))

    def _search_own_distance(self, queries: np.ndarray, k: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """`search` by the method's own distance: every (query, row) pair, `_OWN_CHUNK` queries at a time."""
        # "nn": images grouped by article, in enrolment order within one, so that each article's best distance
        # and the earliest image reaching it are segment reductions.
        columns = np.argsort(self.image_article, kind="stable")
        counts = np.bincount(self.image_article, minlength=len(self.articles))
        starts = np.cumsum(counts) - counts
        arts, dists = [], []
        for start in range(0, len(queries), _OWN_CHUNK):
            if mode == "prototype":
                d = self.distances(queries[start:start + _OWN_CHUNK], self.prototypes)
                order = np.argsort(d, axis=1, kind="stable")[:, :k]  # equal distances: the earlier article
            else:
                per_image = self.distances(queries[start:start + _OWN_CHUNK], self.embeddings)[:, columns]
                d = np.minimum.reduceat(per_image, starts, axis=1)
                reaches = per_image == np.repeat(d, counts, axis=1)
                first = np.minimum.reduceat(np.where(reaches, columns[None, :], len(columns)), starts, axis=1)
                order = np.lexsort((first, d), axis=1)[:, :k]  # equal distances: the earlier image's article
            arts.append(order)
            dists.append(np.take_along_axis(d, order, axis=1))
        return np.concatenate(arts), np.concatenate(dists)

    def search(self, queries: np.ndarray, k: int = 5, mode: str = "nn",
               index: str = "exact") -> tuple[np.ndarray, np.ndarray]:
        """(article indices (Q, k'), distances (Q, k')) of each query's k' = min(k, articles) best articles,
        best first: exact (chunked, bounded memory; see module docstring for ties), or with index='faiss'
        approximate (search.FaissIndex). Euclidean distances, or the gallery's own `distance`."""
        if mode not in MODES:
            raise UserError(f"mode {mode!r}: use one of {MODES}")
        if index not in INDEXES:
            raise UserError(f"index {index!r}: use one of {INDEXES}")
        if not self.articles:
            raise UserError("the gallery is empty: enroll reference images first")
        queries = np.asarray(queries, np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise UserError(f"queries of shape {queries.shape}; the gallery holds {self.dim}-d embeddings")
        k = max(1, min(k, len(self.articles)))
        if self.distance is not None:
            if index != "exact":
                raise UserError(f"index {index!r} searches Euclidean distances; this model ranks by its own "
                                f"learned score: use index='exact'")
            return self._search_own_distance(queries, k, mode)
        if mode == "prototype":
            d2, idx = self._index(mode, index).search(queries, k)
            return idx, np.sqrt(d2)
        # The k-th distinct article ranks at most (k - 1) * (most images of an article) + 1 among images.
        per_article = int(np.bincount(self.image_article).max())
        d2, idx = self._index(mode, index).search(queries, (k - 1) * per_article + 1)
        arts = self.image_article[idx]
        seen_before = np.tril(arts[:, :, None] == arts[:, None, :], -1).any(axis=2)
        first = np.argsort(seen_before, axis=1, kind="stable")[:, :k]  # first occurrences, in rank order
        return np.take_along_axis(arts, first, axis=1), np.sqrt(np.take_along_axis(d2, first, axis=1))

    def threshold(self, mode: str) -> float | None:
        return None if self.calibration is None else self.calibration[mode]["threshold"]

    def _negative_scores(self, queries: np.ndarray, own: np.ndarray, mode: str) -> np.ndarray:
        """Distance of each query to the best article other than `own` (its article index, -1: not enrolled)."""
        arts, dist = self.search(queries, k=2, mode=mode)
        negative = np.where(arts[:, 0] != own, dist[:, 0], dist[:, -1])
        return negative[(arts[:, 0] != own) | (arts.shape[1] > 1)]  # a one-article gallery has no other

    def match_scores(self, queries: np.ndarray, labels: Sequence[str], mode: str) -> tuple[np.ndarray, np.ndarray]:
        """(positive, negative) calibration scores of labelled held-out queries: the distance to their own
        article when it is enrolled, and the distance to the best other article (see calibrate.py)."""
        index = {a: i for i, a in enumerate(self.articles)}
        own = np.array([index.get(str(label), -1) for label in labels])
        positive = []
        for q, a in zip(np.asarray(queries, np.float32), own):
            if a < 0:
                continue
            refs = self.prototypes[a:a + 1] if mode == "prototype" else self.embeddings[self.image_article == a]
            positive.append(self.distances(q[None], refs).min())
        return np.array(positive, np.float32), self._negative_scores(queries, own, mode)

    def leave_one_out_scores(self, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """(positive, negative) scores of the reference images themselves: each image of an article with >= 2
        images against its article without it (its nearest other image, or the mean of the others), and every
        image against the best other article (which its own presence does not change)."""
        positive = []
        for a in range(len(self.articles)):
            m = self.embeddings[self.image_article == a]
            if len(m) < 2:
                continue
            if mode == "nn":
                d = np.array(self.distances(m, m))  # a writable copy
                np.fill_diagonal(d, np.inf)
                positive.append(d.min(axis=1))
            else:
                others = (m.sum(axis=0) - m) / (len(m) - 1)
                positive.append(np.diagonal(self.distances(m, others)))
        positive = np.concatenate(positive) if positive else np.zeros(0, np.float32)
        return positive, self._negative_scores(self.embeddings, self.image_article, mode)

    def calibrate(self, queries: np.ndarray, labels: Sequence[str], target_far: float) -> dict[str, Any]:
        """Sets and returns the unknown threshold of each mode for `target_far`, from held-out labelled
        embeddings (photos of enrolled articles not in the gallery, and/or of articles not enrolled)."""
        if len(queries) != len(labels):
            raise UserError(f"calibrate: {len(labels)} labels for {len(queries)} images")
        return self._set_calibration(lambda mode: self.match_scores(queries, labels, mode), target_far,
                                     f"{len(queries)} held-out images")

    def calibrate_leave_one_out(self, target_far: float) -> dict[str, Any]:
        """`calibrate` without held-out images: each reference image scored against the gallery without it
        (`leave_one_out_scores`). The negatives are as good as held-out ones (an image against the other
        articles); the positives, photos from the reference set itself, make the recall optimistic."""
        return self._set_calibration(self.leave_one_out_scores, target_far, "leave-one-out on the references")

    def _set_calibration(self, scores, target_far: float, source: str) -> dict[str, Any]:
        calibration: dict[str, Any] = {"target_far": float(target_far), "articles": len(self.articles),
                                       "source": source}
        for mode in MODES:
            positive, negative = scores(mode)
            t = far_threshold(negative, target_far)
            calibration[mode] = {"threshold": t, **rates(positive, negative, t),
                                 "positive_median": float(np.median(positive)) if len(positive) else None,
                                 "negative_median": float(np.median(negative))}
        self.calibration = calibration
        return calibration

    def check_compatible(self, fingerprint: dict[str, Any], where: str) -> None:
        """Refuses (one line, saying what differs) a gallery made by another model or preprocessing."""
        problem = fingerprint_difference(self.fingerprint, fingerprint)
        if problem:
            raise UserError(f"gallery {where} was made by a different model or preprocessing: {problem}; "
                            f"enroll the references again with this model")

    def save(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        np.savez(os.path.join(path, "gallery.npz"), embeddings=self.embeddings, image_article=self.image_article,
                 refs=np.array(self.refs, dtype=np.str_), digests=np.array(self.digests, dtype=np.str_))
        meta = {"format": FORMAT_VERSION, "dim": self.dim, "articles": self.articles,
                "fingerprint": self.fingerprint, "calibration": self.calibration}
        tmp = os.path.join(path, "gallery.json.tmp")
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(tmp, os.path.join(path, "gallery.json"))

    @classmethod
    def load(cls, path: str) -> Gallery:
        meta_path, arrays_path = os.path.join(path, "gallery.json"), os.path.join(path, "gallery.npz")
        if not (os.path.isfile(meta_path) and os.path.isfile(arrays_path)):
            raise UserError(f"gallery {path!r}: not a gallery folder (needs gallery.json and gallery.npz; "
                            f"make one with `python -m navee_jax.recognize enroll`)")
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            with np.load(arrays_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("embeddings", "image_article", "refs")}
                # Galleries written before digests were kept have none: "" (enrolled_copies then uses paths).
                arrays["digests"] = z["digests"] if "digests" in z.files else np.full(len(arrays["refs"]), "")
        except Exception as e:  # json / zip / numpy raise many types; all mean "damaged"
            raise UserError(f"gallery {path!r} is unreadable: {type(e).__name__}: {e}") from None
        if meta.get("format") != FORMAT_VERSION:
            raise UserError(f"gallery {path!r}: format {meta.get('format')!r}, this version reads {FORMAT_VERSION}")
        g = cls(meta["dim"], meta["fingerprint"])
        g.embeddings, g.image_article = arrays["embeddings"].astype(np.float32), arrays["image_article"]
        g.refs, g.articles = [str(r) for r in arrays["refs"]], list(meta["articles"])
        g.digests = [str(d) for d in arrays["digests"]]
        g.calibration = meta["calibration"]
        return g
