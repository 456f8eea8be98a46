"""Likely patients among images without a PatientID (``split.grouping: patient_likely``).

Exported slices (PNG/JPG datasets) carry no patient id, and a perceptual hash of the
original image alone (``split.grouping: phash``) both misses neighbouring slices of one
patient (6-10 bits apart) and chains unrelated images whose hashes happen to be close.
This rule weighs three kinds of evidence per pair of images:

- ``phash``: the 64-bit pHash of the original image (the convert manifest), before the
  resize and padding: the same picture, re-exported at another size or window;
- ``view``: the pHash of the whole image at the model's size (the converted PNG with
  ``convert.framing: image``; with ``body`` the image before the body crop, so that the
  evidence does not depend on the framing): the original's crop and aspect ratio, which
  one export of one patient shares, show in it as the padding and the place of the body
  in the square. The original's size itself adds
  nothing: on the Chest CT-Scan copy, 813 of the 836 pairs of images of one size are
  near duplicates anyway, and 470 of the 1283 near-duplicate pairs differ in size (one
  slice exported at two resolutions);
- ``thumb``: the Pearson correlation of 16 x 16 thumbnails of that view: the
  layout of body, lungs and mediastinum, brightness and contrast taken out.

- ``body``: the pHash of the body cropped out of the image (:func:`lungct.io.images.frame_to_body`)
  at the model's size: one slice exported twice with different margins (the official
  Chest CT-Scan folders hold many: tight crops in train, wide with the table in test)
  has whole views 12-36 bits apart and body views within 2.

Two images are **near duplicates** when their views or their body views are within
``view_duplicate_distance`` bits (the model sees the same picture, in one framing or
the other), or when their
originals are within ``near_duplicate_distance`` bits *and* their thumbnails agree
(``duplicate_similarity``): two kinds of evidence, because the hash of the original
alone links different patients (on the Chest CT-Scan copy, 4 pairs 4 bits apart are
visibly different patients, 2 of them filed under different classes; their thumbnails
correlate at 0.76-0.90, the other 1259 such pairs at 0.905 and above). Near duplicates
always share a group, chains included; the leakage gate checks exactly this relation
(:func:`duplicate_pairs`).

Groups of near duplicates then merge into **likely patients** by average linkage
(UPGMA): two groups merge while the *mean*, over all their image pairs, of

    max(view bits / patient_distance, (1 - correlation) / (1 - patient_similarity))

is at most 1. The ``max`` asks both the view hash and the thumbnails to agree; the mean
over all pairs is the guard against chaining: A ~ B ~ C with A and C unrelated merges
only if the group stays close on average, which single linkage (connected components)
never asks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lungct.errors import UserError, first_line
from lungct.io.images import hash_values, phash

THUMB = 16  # side of the thumbnail whose correlation is the similarity evidence
CELLS = 1 << 22  # pairwise comparisons held at a time (a block of rows x n)


@dataclass(frozen=True)
class Evidence:
    """What the rule compares, one row per image."""

    phash: np.ndarray  # uint64: pHash of the original image
    view: np.ndarray  # uint64: pHash of the whole image at the model's size
    thumb: np.ndarray  # float32 (n, THUMB**2): centred, unit-norm thumbnail of the view
    body: np.ndarray  # uint64: pHash of the body cropped out of it, at the model's size

    def __len__(self) -> int:
        return len(self.phash)

    def subset(self, index: Sequence[int] | np.ndarray) -> Evidence:
        index = np.asarray(index, dtype=np.int64)
        return Evidence(self.phash[index], self.view[index], self.thumb[index], self.body[index])


@dataclass(frozen=True)
class Rule:
    """The thresholds of the rule (``split`` params of the same names)."""

    near_duplicate_distance: int
    view_duplicate_distance: int
    duplicate_similarity: float
    patient_distance: int
    patient_similarity: float

    @classmethod
    def of(cls, params: object) -> Rule:
        """The rule of a ``SplitParams`` (or anything with these attributes)."""
        return cls(**{name: getattr(params, name) for name in cls.__dataclass_fields__})


def view_record(view: np.ndarray) -> tuple[str, str]:
    """The evidence of one image as the convert manifest records it (``view_phash``,
    ``view_thumb``): the pHash of its view, the whole image at the model's size in
    grayscale (2-D uint8, :func:`lungct.data.convert.evidence_view`), and that view's
    :data:`THUMB` x :data:`THUMB` BOX thumbnail as hex bytes."""
    image = Image.fromarray(view)
    thumb = np.asarray(image.resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.uint8)
    return phash(view, reducing_gap=None), thumb.tobytes().hex()


def manifest_evidence(
    phashes: Sequence[str],
    view_phashes: Sequence[str],
    thumbs: Sequence[str],
    body_phashes: Sequence[str],
    where: Path,
) -> Evidence:
    """The :class:`Evidence` of images from their manifest columns (``phash``,
    ``view_phash``, ``view_thumb``, ``body_phash``); a :class:`UserError` naming ``where``
    when one is not what convert writes (the manifest was damaged or is an older
    version's)."""
    try:
        originals, views = hash_values(phashes), hash_values(view_phashes)
        bodies = hash_values(body_phashes)
        raw = [np.frombuffer(bytes.fromhex(t), dtype=np.uint8) for t in thumbs]
        if any(r.size != THUMB * THUMB for r in raw):
            raise ValueError(f"a view_thumb is not {THUMB * THUMB} bytes")
    except (ValueError, OverflowError) as exc:
        raise UserError(
            f"{where}: unreadable grouping evidence ({first_line(exc)}); rerun the convert stage"
        ) from None
    thumb = np.stack(raw).astype(np.float32) if raw else np.zeros((0, THUMB**2), np.float32)
    thumb -= thumb.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(thumb, axis=1, keepdims=True)
    return Evidence(originals, views, np.divide(thumb, norm, out=thumb, where=norm > 0), bodies)


def _blocks(n: int, width: int) -> list[np.ndarray]:
    """Row indices in blocks of at most CELLS / width rows."""
    rows = max(1, CELLS // max(width, 1))
    return [np.arange(start, min(start + rows, n)) for start in range(0, n, rows)]


def _bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(a[:, None] ^ b[None, :])


def duplicate_pairs(left: Evidence, right: Evidence, rule: Rule) -> list[tuple[int, int]]:
    """Index pairs (i in left, j in right) of near duplicates (module docstring)."""
    pairs: list[tuple[int, int]] = []
    for block in _blocks(len(left), len(right)):
        part, start = left.subset(block), int(block[0])
        view = _bits(part.view, right.view) <= rule.view_duplicate_distance
        view |= _bits(part.body, right.body) <= rule.view_duplicate_distance
        rows, cols = np.nonzero(
            ~view & (_bits(part.phash, right.phash) <= rule.near_duplicate_distance)
        )
        similar = np.einsum("ij,ij->i", part.thumb[rows], right.thumb[cols])
        view[rows, cols] = similar >= rule.duplicate_similarity
        rows, cols = np.nonzero(view)
        pairs.extend(zip((rows + start).tolist(), cols.tolist(), strict=True))
    return pairs


def _distance(a: Evidence, b: Evidence, rule: Rule) -> np.ndarray:
    """Pairwise patient distance: <= 1 when both the view hash and the thumbnails agree."""
    view = _bits(a.view, b.view) / rule.patient_distance
    thumb = np.clip(1.0 - a.thumb @ b.thumb.T, 0.0, None) / (1.0 - rule.patient_similarity)
    return np.maximum(view, thumb)


def _components(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    if not pairs:
        return np.arange(n)
    rows, cols = np.array(pairs, dtype=np.int64).T
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


# Not scipy's linkage+fcluster (0.11 vs 0.16 s, 944 real images): it breaks ties at the limit otherwise (2 regroup).
def average_linkage(distance: np.ndarray, sizes: np.ndarray, limit: float) -> np.ndarray:
    """Average linkage (UPGMA) of clusters, stopped at ``limit``.

    ``distance``: the clusters' mean pairwise image distances (k x k); ``sizes``: their
    image counts. Two clusters merge while the mean distance over all image pairs between
    them is at most ``limit``, closest first. Returns a label per cluster (the lowest
    cluster index of its merged cluster). The nearest-neighbour-chain algorithm: the same
    merges as the greedy closest-first order (average linkage is reducible), O(k^2).
    """
    k = len(sizes)
    mean = np.array(distance, dtype=np.float64)
    np.fill_diagonal(mean, np.inf)
    size = np.array(sizes, dtype=np.float64)
    label = np.arange(k)
    active = np.ones(k, dtype=bool)  # still merging
    chain: list[int] = []
    while True:
        if not chain:
            open_ = np.nonzero(active)[0]
            if len(open_) < 2:
                break
            chain.append(int(open_[0]))
        a = chain[-1]
        row = np.where(active, mean[a], np.inf)
        b = int(np.argmin(row))
        if row[b] > limit:  # a merges with nothing: later merges only move others away
            active[a] = False
            chain.pop()
            continue
        if len(chain) > 1 and row[chain[-2]] <= row[b]:
            b = chain[-2]
        if len(chain) > 1 and b == chain[-2]:
            chain.pop()
            chain.pop()
            keep, gone = min(a, b), max(a, b)
            merged = (size[a] * mean[a] + size[b] * mean[b]) / (size[a] + size[b])
            mean[keep], mean[:, keep] = merged, merged
            mean[keep, keep] = np.inf
            mean[gone], mean[:, gone] = np.inf, np.inf
            size[keep] += size[gone]
            active[gone] = False
            label[label == gone] = keep
        else:
            chain.append(b)
    return label


def likely_patients(evidence: Evidence, rule: Rule) -> np.ndarray:
    """Per image, the index of the first image of its likely patient (module docstring)."""
    n = len(evidence)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    duplicates = _components(n, duplicate_pairs(evidence, evidence, rule))
    # Only images with some pair within the patient distance can end up together:
    # average linkage runs within each connected part of that graph, not over all images.
    close: list[tuple[int, int]] = []
    for block in _blocks(n, n):
        rows, cols = np.nonzero(_distance(evidence.subset(block), evidence, rule) <= 1.0)
        close.extend(zip((rows + int(block[0])).tolist(), cols.tolist(), strict=True))
    close += [(i, j) for i, j in enumerate(duplicates.tolist())]
    parts = _components(n, close)
    labels = duplicates.copy()  # a part of one group of near duplicates stays as it is
    order = np.argsort(parts, kind="stable")
    starts = np.flatnonzero(np.diff(parts[order], prepend=-1))
    offset = n  # labels of different parts must not meet
    for members in np.split(order, starts[1:]):
        _, cluster = np.unique(duplicates[members], return_inverse=True)
        k = int(cluster.max()) + 1
        if k == 1:
            continue
        one_hot = np.zeros((k, len(members)))
        one_hot[cluster, np.arange(len(members))] = 1.0
        sizes = one_hot.sum(axis=1)
        sub = evidence.subset(members)
        sums = one_hot @ _distance(sub, sub, rule) @ one_hot.T
        merged = average_linkage(sums / np.outer(sizes, sizes), sizes, 1.0)
        labels[members] = offset + merged[cluster]
        offset += k
    # The first image of each group names it, whatever the order of the parts.
    first = {}
    for i, label in enumerate(labels.tolist()):
        first.setdefault(label, i)
    return np.array([first[label] for label in labels.tolist()], dtype=np.int64)
