"""Natural-photo patches built at run time from images inside installed wheels.

Sources (all read from the installed packages, never downloaded): 8 RGB photos from
``skimage.data``, ``china.jpg`` / ``flower.jpg`` from scikit-learn, ``grace_hopper.jpg`` from
matplotlib. Licences: see :data:`SOURCES` and the README section "Image data".

Recipe (embedded-defaults §1): pick a source image uniformly (equal weight per image, whatever its
size), then a scale uniformly from (1, 1/2, 1/4) (box-downsampled), then a uniform crop position;
a crop whose pixel std is below 8/255 is dropped with probability 0.9; crops are h-flipped with
probability 1/2.

Train / held-out split is spatial and fixed: in every source image the right-most ``HELDOUT_FRAC``
of the columns (at every scale) is the held-out region and the rest is the train region; crops never
straddle the border, so no held-out pixel is ever seen in training.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch

HELDOUT_FRAC = 0.2
SCALES = (1, 2, 4)  # box-downsampling factors
FLAT_STD = 8.0 / 255.0
FLAT_KEEP = 0.1


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load():
        from skimage import data

        img = getattr(data, name)()
        return img[0] if isinstance(img, tuple) else img  # stereo pair: the left image

    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load():
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)

    return load


def _matplotlib(name: str) -> Callable[[], np.ndarray]:
    def load():
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data(name) as f:
            return np.asarray(Image.open(f).convert("RGB"))

    return load


#: name -> (loader, package, licence as stated in the package)
SOURCES: dict[str, tuple[Callable[[], np.ndarray], str, str]] = {
    "astronaut": (_skimage("astronaut"), "scikit-image", "public domain (NASA)"),
    "chelsea": (_skimage("chelsea"), "scikit-image", "CC0 (Stefan van der Walt)"),
    "coffee": (_skimage("coffee"), "scikit-image", "CC0 (Rachel Michetti)"),
    "hubble_deep_field": (_skimage("hubble_deep_field"), "scikit-image", "public domain (NASA)"),
    "immunohistochemistry": (_skimage("immunohistochemistry"), "scikit-image", "no known copyright restrictions"),
    "retina": (_skimage("retina"), "scikit-image", "CC0 (Mikael Häggström)"),
    "rocket": (_skimage("rocket"), "scikit-image", "public domain (SpaceX)"),
    "motorcycle_left": (_skimage("stereo_motorcycle"), "scikit-image",
                        "Middlebury 2014 stereo data set; no licence stated, cite Scharstein et al. 2014"),
    "china": (_sklearn("china.jpg"), "scikit-learn", "CC-BY 2.0 (danielbuechele)"),
    "flower": (_sklearn("flower.jpg"), "scikit-learn", "CC-BY 2.0 (vultilion)"),
    "grace_hopper": (_matplotlib("grace_hopper.jpg"), "matplotlib",
                     "not stated in the wheel; U.S. Navy photograph (public domain)"),
}


@functools.lru_cache(maxsize=1)
def load_source_images() -> dict[str, np.ndarray]:
    """Every source photo as float32 (H, W, 3) in [0, 1], in :data:`SOURCES` order."""
    out = {}
    for name, (load, _, _) in SOURCES.items():
        img = np.asarray(load())
        if img.ndim != 3 or img.shape[2] < 3:
            raise RuntimeError(f"source image {name!r} has shape {img.shape}, expected (H, W, 3)")
        out[name] = (img[..., :3].astype(np.float32) / 255.0)
    return out


def _box_down(img: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return img
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    return img[:h, :w].reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3))


@functools.lru_cache(maxsize=4)
def _regions(split: str) -> tuple[np.ndarray, ...]:
    """For each (image, scale): the split's region of the downsampled image, (h, w, 3) float32."""
    out = []
    for img in load_source_images().values():
        for f in SCALES:
            d = _box_down(img, f)
            cut = int(round(d.shape[1] * (1 - HELDOUT_FRAC)))
            out.append(np.ascontiguousarray(d[:, :cut] if split == "train" else d[:, cut:]))
    return tuple(out)


def build_patches(n: int, size: int = 16, split: str = "train", seed: int = 0) -> torch.Tensor:
    """``n`` natural patches as a float32 tensor (n, 3, size, size) in [0, 1], deterministic in ``seed``.

    split: "train" or "heldout" (disjoint pixel regions, see module docstring).
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if n < 1 or size < 4:
        raise ValueError(f"need n >= 1 and size >= 4, got n={n}, size={size}")
    regions = _regions(split)
    n_img, n_sc = len(SOURCES), len(SCALES)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, size])
    out = np.empty((n, size, size, 3), dtype=np.float32)
    filled = 0
    while filled < n:
        m = 2 * (n - filled) + 64
        ii = rng.integers(n_img, size=m)
        ss = rng.integers(n_sc, size=m)
        u_y, u_x, u_keep, u_flip = rng.random((4, m))
        for i, s, uy, ux, uk, uf in zip(ii, ss, u_y, u_x, u_keep, u_flip):
            r = regions[i * n_sc + s]
            if r.shape[0] < size or r.shape[1] < size:
                continue
            y = int(uy * (r.shape[0] - size + 1))
            x = int(ux * (r.shape[1] - size + 1))
            crop = r[y:y + size, x:x + size]
            if crop.std() < FLAT_STD and uk >= FLAT_KEEP:
                continue
            out[filled] = crop[:, ::-1] if uf < 0.5 else crop
            filled += 1
            if filled == n:
                break
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
