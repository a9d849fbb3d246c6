"""Small synthetic FER2013 files for tests: random faces whose label is visible in them."""
import gzip

import numpy as np


def faces(n, seed):
    """(images uint8 (n, 48, 48), labels (n,)): a bright square whose position encodes the label."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 7
    images = rng.integers(0, 80, (n, 48, 48)).astype(np.uint8)
    for image, label in zip(images, labels):
        row, col = divmod(int(label), 3)
        image[4 + 14 * row:14 + 14 * row, 4 + 14 * col:14 + 14 * col] = 230
    return images, labels


def write_csv(path, n_train=84, n_public=28, n_private=0, seed=0):
    """A Kaggle-layout CSV (gzipped when path ends in .gz); returns the path."""
    images, labels = faces(n_train + n_public + n_private, seed)
    usage = ["Training"] * n_train + ["PublicTest"] * n_public + ["PrivateTest"] * n_private
    lines = ["emotion,pixels,Usage"] + [f"{label},{' '.join(map(str, image.ravel()))},{u}"
                                        for image, label, u in zip(images, labels, usage)]
    text = "\n".join(lines) + "\n"
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt") as f:
        f.write(text)
    return path
