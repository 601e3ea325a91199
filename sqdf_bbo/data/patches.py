"""Natural-photo patches built at run time from images inside installed wheels.

Sources (all read from the installed packages, never downloaded): 8 RGB photos from
``skimage.data``, ``china.jpg`` / ``flower.jpg`` from scikit-learn, ``grace_hopper.jpg`` from
matplotlib. Licences: see :data:`SOURCES` and docs/tasks/image.md ("Image data").

Recipe (this project's embedded image tier): pick a source image uniformly (equal weight per image, whatever its
size), then a scale uniformly from (1, 1/2, 1/4) (box-downsampled), then a uniform crop position;
a crop whose pixel std is below 8/255 is dropped with probability 0.9; crops are h-flipped with
probability 1/2.

Train / held-out split is spatial, interleaved and fixed: every source photo is cut into square tiles
of ``TILE`` pixels (full resolution) and a seeded coin marks ``HELDOUT_FRAC`` of them held-out. A crop
belongs to a split only if every full-resolution pixel under it lies in that split's tiles (at scale
1/f a pixel covers f x f full-resolution pixels), so no held-out pixel is ever seen in training, at any
scale. Interleaving matters: the earlier split (the right-most 20 % of columns) made the two sides
different distributions (phi Fréchet distance of 512 train patches to the held-out reference 76, vs
11 for 512 other held-out patches); with tiles it is 31 vs 11 (docs/tasks/image.md).
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch

HELDOUT_FRAC = 0.2
TILE = 64  # full-resolution tile side of the split; at scale 1/4 a tile is 16 px, the smallest crop side
SPLIT_SEED = 99
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


def heldout_mask(k: int, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool, full resolution: True where source image number ``k`` (of :data:`SOURCES`) is held out."""
    H, W = shape
    tiles = np.random.default_rng([SPLIT_SEED, k]).random((-(-H // TILE), -(-W // TILE))) < HELDOUT_FRAC
    return np.kron(tiles, np.ones((TILE, TILE), dtype=bool))[:H, :W]


@functools.lru_cache(maxsize=8)
def _crop_sites(split: str, size: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """For each (image, scale), in :data:`SOURCES` x :data:`SCALES` order: the downsampled image (h, w, 3)
    and the (n, 2) top-left corners of the size x size crops lying wholly in ``split``."""
    out = []
    for k, img in enumerate(load_source_images().values()):
        held = heldout_mask(k, img.shape[:2])
        for f in SCALES:
            d = _box_down(img, f)
            h, w = d.shape[:2]
            blocks = held[:h * f, :w * f].reshape(h, f, w, f)
            # a downsampled pixel is in the split only if all f x f full-resolution pixels under it are
            inside = blocks.all(axis=(1, 3)) if split == "heldout" else ~blocks.any(axis=(1, 3))
            outside = np.pad((~inside).astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            if h < size or w < size:
                corners = np.zeros((0, 2), dtype=np.int64)
            else:
                n_out = (outside[size:, size:] - outside[:-size, size:] - outside[size:, :-size]
                         + outside[:-size, :-size])
                corners = np.argwhere(n_out == 0)
            out.append((d, corners))
    return tuple(out)


def build_patches(n: int, size: int = 16, split: str = "train", seed: int = 0) -> torch.Tensor:
    """``n`` natural patches as a float32 tensor (n, 3, size, size) in [0, 1], deterministic in ``seed``.

    split: "train" or "heldout" (disjoint pixel regions, see module docstring). A crop position is
    uniform over the split's valid corners of the chosen (image, scale).
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if n < 1 or size < 4:
        raise ValueError(f"need n >= 1 and size >= 4, got n={n}, size={size}")
    sites = _crop_sites(split, size)
    n_img, n_sc = len(SOURCES), len(SCALES)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, size])
    out = np.empty((n, size, size, 3), dtype=np.float32)
    filled = 0
    while filled < n:
        m = 2 * (n - filled) + 64
        ii = rng.integers(n_img, size=m)
        ss = rng.integers(n_sc, size=m)
        u_site, u_keep, u_flip = rng.random((3, m))
        for i, s, us, uk, uf in zip(ii, ss, u_site, u_keep, u_flip):
            d, corners = sites[i * n_sc + s]
            if len(corners) == 0:
                continue
            y, x = corners[min(int(us * len(corners)), len(corners) - 1)]
            crop = d[y:y + size, x:x + size]
            if crop.std() < FLAT_STD and uk >= FLAT_KEEP:
                continue
            out[filled] = crop[:, ::-1] if uf < 0.5 else crop
            filled += 1
            if filled == n:
                break
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
