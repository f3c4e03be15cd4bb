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
import warnings
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
# Part of a cached split's key: images decoded by an earlier decoder are decoded again. 2: EXIF
# orientation, wide modes scaled to their range, transparency over black.
DECODER_VERSION = 2


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


# Modes whose samples do not fit in 8 bits: Pillow's convert("RGB") clips them (a float image in
# [0, 1] decodes black, a 12-bit one white), so they are scaled to 8 bits first (_eight_bits).
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_BIT_DEPTHS = (8, 10, 12, 14, 16, 24, 32)  # the standard depths an integer image's samples are stored at
_MAX_SAMPLE_VALUE = 281  # TIFF's tag for the largest sample value the file declares


def _declared_max(image: Image.Image) -> float | None:
    """The largest sample value the file declares (TIFF's MaxSampleValue), if any."""
    tags = getattr(image, "tag_v2", None)
    declared = tags.get(_MAX_SAMPLE_VALUE) if tags is not None else None
    if isinstance(declared, tuple):
        declared = max(declared, default=None)
    return float(declared) if isinstance(declared, (int, float)) and declared > 0 else None


def _integer_max(samples: np.ndarray, declared: float | None) -> float:
    """The largest value an integer image's samples can take: what the file declares, else the
    smallest standard bit depth that holds its largest sample (a 12-bit sensor's image stored in 16
    bits is scaled as 12-bit, not darkened 16 times)."""
    if declared is not None:
        return declared
    top = float(samples.max(initial=0))
    return float(next((2 ** bits - 1 for bits in _BIT_DEPTHS if top <= 2 ** bits - 1), top))


def _eight_bits(image: Image.Image, declared: float | None = None) -> Image.Image:
    """A 16-bit, 32-bit integer or float image as 8-bit grey, scaled from the range it holds:
    integers from 0 to their maximum (_integer_max), floats from [0, 1] where they lie in it, else
    from their own minimum and maximum."""
    samples = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        finite = samples[np.isfinite(samples)]
        low, high = (0.0, 1.0) if finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1) else \
            (float(finite.min()), float(finite.max()))
        samples = np.nan_to_num(samples, nan=low, posinf=high, neginf=low)
    else:
        low, high = min(0.0, float(samples.min(initial=0))), _integer_max(samples, declared)
    scaled = (samples - low) / (high - low) if high > low else np.zeros_like(samples)
    return Image.fromarray(np.round(255 * np.clip(scaled, 0, 1)).astype(np.uint8), "L")


def _rgb(image: Image.Image, declared: float | None = None) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: wide samples scaled (not clipped), greyscale repeated, a palette
    looked up, transparency composited over black (what lies under a transparent pixel is
    arbitrary, often left-over colour)."""
    if image.mode in _WIDE_MODES:
        image = _eight_bits(image, declared)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA", "RGBa") or (image.mode != "RGBA" and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        black = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, image)
    return image.convert("RGB")


def decode(path: Path, image_size: int) -> np.ndarray:
    """One image file -> uint8 (3, image_size, image_size): turned upright as its EXIF orientation
    says (a phone's portrait photo), RGB (_rgb), shorter side scaled, centre-cropped."""
    try:
        with Image.open(path) as image:
            image.load()  # decodes now: a truncated file fails here, by name
            image = _rgb(ImageOps.exif_transpose(image), _declared_max(image))  # (a transposed copy has no tags)
            if image.size != (image_size, image_size):
                image = ImageOps.fit(image, (image_size, image_size), method=Image.Resampling.BICUBIC)
            return np.asarray(image, np.uint8).transpose(2, 0, 1)
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise DataError(f"{path} cannot be read as an image ({type(e).__name__}: {e}): the file is truncated, "
                        "corrupt or not an image; replace it or remove it") from None


def decode_all(files: list[Path], image_size: int) -> np.ndarray:
    """uint8 (N, 3, image_size, image_size), in the order of `files`. Images that decode to one
    constant colour are named in a warning: more often a file scaled wrong or blank than a real
    picture, and a folder of them trains on nothing."""
    images = np.empty((len(files), 3, image_size, image_size), np.uint8)

    def one(i: int) -> None:
        images[i] = decode(files[i], image_size)

    pool = ThreadPoolExecutor(max_workers=min(_DECODE_THREADS, os.cpu_count() or 1))
    try:
        for _ in pool.map(one, range(len(files))):
            pass
    finally:  # on the first bad file, the rest are not decoded for nothing
        pool.shutdown(cancel_futures=True)
    flat = images.reshape(len(files), 3, -1)
    constant = np.flatnonzero((flat.min(2) == flat.max(2)).all(1)) if len(files) else np.array([], int)
    if len(constant):
        names = ", ".join(str(files[i]) for i in constant[:5]) + (", ..." if len(constant) > 5 else "")
        warnings.warn(f"{len(constant)} of {len(files)} images decode to a single colour (blank): {names}; "
                      "check that they hold a picture (caviar scales 16-bit, 32-bit and float images from the "
                      "range they hold)", stacklevel=2)
    return images


def image_paths(folder: Path) -> list[Path]:
    """The image files under `folder`, nested folders included, hidden ones left out, sorted."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not _hidden(p, folder))


def count_images(root, split: str) -> int:
    """How many image files a split holds, counted as `scan` finds them (nested folders included,
    hidden files left out), without decoding any; 0 where the split's folder is absent."""
    folder = Path(root).expanduser() / split
    if not folder.is_dir():
        return 0
    return sum(len(image_paths(entry)) for entry in folder.iterdir()
               if entry.is_dir() and not entry.name.startswith("."))


def load_split(root, split: str, image_size: int = 32, mmap: bool = False) -> ImageSet:
    """One split of the image folder at root, from the cache when no file in it has changed (its
    images memory-mapped, read-only, with `mmap`: for a caller that only takes parts of them)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"data.image_size must be a positive whole number of pixels, got {image_size!r}")
    root = Path(root).expanduser()
    classes = class_names(root)
    found = scan(root, split, classes)
    files = [path for path, _ in found]
    kind = f"imagefolder-{split}-{image_size}px"
    key = f"{kind}-{datacache.fingerprint(files, root / split, image_size, classes, DECODER_VERSION)}"
    cached = _cached(root, key, len(files), image_size, classes, mmap)
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


def _cached(root: Path, key: str, count: int, image_size: int, classes: list[str], mmap: bool) -> ImageSet | None:
    manifest_path = datacache.find(root, f"{key}.json")  # written last: present = the entry is complete
    manifest = datacache.load_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("images") != count or manifest.get("classes") != classes:
        return None
    folder = manifest_path.parent
    images = datacache.load_npy(folder / f"{key}.images.npy", mmap=mmap)
    labels = datacache.load_npy(folder / f"{key}.labels.npy")
    if (images is None or labels is None or images.dtype != np.uint8 or images.shape != (count, 3, image_size, image_size)
            or labels.dtype != np.int64 or labels.shape != (count,)
            or (count and (labels.min() < 0 or labels.max() >= len(classes)))):
        return None
    return ImageSet(images, labels, classes, key)
