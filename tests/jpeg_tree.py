"""A small JPEG tree in the `train/<class>/`, `val/<class>/` layout, written by the tests that stream from disk."""

import colorsys

import numpy as np
from PIL import Image

CLASSES, PER_CLASS, TEST_PER_CLASS, SIZE = 10, 40, 10, 64


def write_jpeg_tree(root, classes=CLASSES, per_class=PER_CLASS, test_per_class=TEST_PER_CLASS, size=SIZE):
    """`train/<class>/` and `val/<class>/` JPEGs: one hue per class, with noise."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", test_per_class)):
        for label in range(classes):
            folder = root / split / f"class{label:02d}"
            folder.mkdir(parents=True)
            hue = np.array(colorsys.hsv_to_rgb(label / classes, 0.8, 0.9)) * 255
            for index in range(count):
                pixels = np.clip(hue + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{index:03d}.jpg", quality=90)
    return root
