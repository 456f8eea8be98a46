"""train.cache: file keeps the decoded images in memory-mapped files: train and val share
one folder, and each must keep its own file (a second open of one name truncated the
first map under it: a SIGBUS on the next read)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lungct.model.dataset import image_dataset


def test_two_file_caches_in_one_folder_keep_their_images(tmp_path):
    rng = np.random.default_rng(0)
    sets = []
    for name, count in (("train", 5), ("val", 3)):
        paths = []
        for i in range(count):
            path = tmp_path / f"{name}-{i}.png"
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(path)
            paths.append(str(path))
        sets.append(paths)
    cache = tmp_path / "cache"
    train = image_dataset(sets[0], [0] * 5, 8, 1, 2, cache="file", cache_dir=cache)
    val = image_dataset(sets[1], [1] * 3, 8, 1, 2, cache="file", cache_dir=cache)
    for paths, data in zip(sets, (train, val), strict=True):
        got = np.concatenate([x.numpy() for x, _ in data])[..., 0]
        want = np.stack([np.asarray(Image.open(p)) for p in paths]).astype(np.float32)
        np.testing.assert_array_equal(got, want)
    assert len(list(cache.glob("*.npy"))) == 2
