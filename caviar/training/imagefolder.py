"""A folder of images per class (torchvision's ImageFolder layout) -> uint8 arrays, decoded once.

    root/train/<class>/*.png|jpg|...    root/test/<class>/*.png|jpg|...

Class names are the sorted folder names under train/ (their order gives the labels, test/ uses the
same). Each image is decoded with Pillow, converted to RGB, scaled so its shorter side is
`image_size` and centre-cropped to a square (ImageOps.fit), so images of any size and shape mix.
A split is cached as uint8 arrays (caviar.training.datacache): later loads read two .npy files,
as fast as CIFAR's batches, until a file in the split changes. Everything in a class folder must
be an image (hidden files aside): a stray, truncated or corrupt file is an error naming it, never
a silent skip that would change what a trial trains on.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from caviar.errors import DataError
from caviar.training import datacache

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "test")
# Pillow's decoders release the GIL: a few threads decode a folder that many times faster.
_DECODE_THREADS = 8


@dataclass
class ImageSet:
    """One split of an image folder, decoded."""

    images: np.ndarray  # uint8 (N, 3, image_size, image_size)
    labels: np.ndarray  # int64 (N,), indices into classes
    classes: list[str]  # the sorted class folder names of train/
    key: str  # "imagefolder-<split>-<size>px-<fingerprint>": names its cache entries (and statistics)


def _hidden(path: Path, base: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(base).parts)


def split_folder(root, split: str) -> Path:
    """root/<split>, which must exist."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root {root} does not exist; set data.root (or CAVIAR_DATA) to the folder that holds "
                        "train/<class>/ and test/<class>/ (data.format: imagefolder)")
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"{folder} is missing: an image folder (data.format: imagefolder) keeps its {split} images "
                        f"in {folder}/<class name>/; create it there, or point data.root at the folder that holds "
                        f"{split}/")
    return folder


def class_names(root) -> list[str]:
    """The sorted class folder names under root/train (only folder names are read)."""
    folder = split_folder(root, "train")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) < 2:
        raise DataError(f"{folder} has {len(names)} class folder{'s' * (len(names) != 1)}: a classifier needs at "
                        f"least 2; put each class's images in {folder}/<class name>/")
    return names


def scan(root, split: str, classes: list[str]) -> list[tuple[Path, int]]:
    """(image file, label) of every image of a split, in sorted order; what is not an image in a
    class folder, an empty class folder, or a class train/ lacks is a DataError naming it."""
    folder = split_folder(root, split)
    index = {name: i for i, name in enumerate(classes)}
    found: list[tuple[Path, int]] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            raise DataError(f"{entry} is not in a class folder: each image goes in {folder}/<class name>/; "
                            "move it there or remove it")
        if entry.name not in index:
            raise DataError(f"{entry} is a class the training set does not have ({folder.parent}/train has "
                            f"{len(classes)}: {', '.join(classes[:5])}{', ...' * (len(classes) > 5)}); "
                            "rename it to one of them or remove it")
        files = sorted(p for p in entry.rglob("*") if p.is_file() and not _hidden(p, entry))
        for path in files:
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(f"{path} is not an image file (read are {' '.join(IMAGE_EXTENSIONS)}); move it "
                                f"out of {entry}")
        if not files:
            raise DataError(f"class folder {entry} is empty: put the class's images in it, or remove the folder")
        found += [(path, index[entry.name]) for path in files]
    if not found:
        raise DataError(f"{folder} has no class folders with images; put them in {folder}/<class name>/")
    return found


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16"):  # 16-bit grey (scientific PNGs): keep the top byte
        image = Image.fromarray((np.asarray(image, np.uint16) >> 8).astype(np.uint8))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # what Pillow asks for before dropping a palette's alpha
    return image.convert("RGB")


def decode(path: Path, image_size: int) -> np.ndarray:
    """One image file -> uint8 (3, image_size, image_size): RGB, shorter side scaled, centre-cropped."""
    try:
        with Image.open(path) as image:
            image.load()  # decodes now: a truncated file fails here, by name
            image = _rgb(image)
            if image.size != (image_size, image_size):
                image = ImageOps.fit(image, (image_size, image_size), method=Image.Resampling.BICUBIC)
            return np.asarray(image, np.uint8).transpose(2, 0, 1)
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise DataError(f"{path} cannot be read as an image ({type(e).__name__}: {e}): the file is truncated, "
                        "corrupt or not an image; replace it or remove it") from None


def decode_all(files: list[Path], image_size: int) -> np.ndarray:
    """uint8 (N, 3, image_size, image_size), in the order of `files`."""
    images = np.empty((len(files), 3, image_size, image_size), np.uint8)

    def one(i: int) -> None:
        images[i] = decode(files[i], image_size)

    pool = ThreadPoolExecutor(max_workers=min(_DECODE_THREADS, os.cpu_count() or 1))
    try:
        for _ in pool.map(one, range(len(files))):
            pass
    finally:  # on the first bad file, the rest are not decoded for nothing
        pool.shutdown(cancel_futures=True)
    return images


def load_split(root, split: str, image_size: int = 32) -> ImageSet:
    """One split of the image folder at root, from the cache when no file in it has changed."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"data.image_size must be a positive whole number of pixels, got {image_size!r}")
    root = Path(root).expanduser()
    classes = class_names(root)
    found = scan(root, split, classes)
    files = [path for path, _ in found]
    kind = f"imagefolder-{split}-{image_size}px"
    key = f"{kind}-{datacache.fingerprint(files, root / split, image_size, classes)}"
    cached = _cached(root, key, len(files), image_size, classes)
    if cached is not None:
        return cached
    images = decode_all(files, image_size)
    labels = np.array([label for _, label in found], np.int64)
    manifest = {"images": len(files), "image_size": image_size, "classes": classes, "split": split,
                "source": str(root / split)}
    datacache.store(root, {f"{key}.images.npy": datacache.save_npy(images),
                           f"{key}.labels.npy": datacache.save_npy(labels),
                           f"{key}.json": datacache.save_json(manifest)}, stale_prefix=f"{kind}-")
    return ImageSet(images, labels, classes, key)


def _cached(root: Path, key: str, count: int, image_size: int, classes: list[str]) -> ImageSet | None:
    manifest_path = datacache.find(root, f"{key}.json")  # written last: present = the entry is complete
    manifest = datacache.load_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("images") != count or manifest.get("classes") != classes:
        return None
    folder = manifest_path.parent
    images = datacache.load_npy(folder / f"{key}.images.npy")
    labels = datacache.load_npy(folder / f"{key}.labels.npy")
    if (images is None or labels is None or images.dtype != np.uint8 or images.shape != (count, 3, image_size, image_size)
            or labels.dtype != np.int64 or labels.shape != (count,)
            or (count and (labels.min() < 0 or labels.max() >= len(classes)))):
        return None
    return ImageSet(images, labels, classes, key)
