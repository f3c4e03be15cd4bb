"""`caviar predict`: a saved ensemble, or a file `caviar export` wrote, run on image files.

Each file is prepared exactly as the members' training images were (caviar.training.imagefolder.decode:
turned upright by its EXIF orientation, RGB, shorter side scaled to the members' image size,
centre-cropped); the statistics are the model's own (inside the ensemble and the exported module).
An exported file carries what it needs in its metadata ("caviar.json": image size, class names),
read here, so a TorchScript or ONNX file predicts on files without its ensemble folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from caviar.ensembles.export import METADATA
from caviar.errors import ConfigError
from caviar.layout import ENSEMBLE_FILE
from caviar.training.imagefolder import IMAGE_EXTENSIONS, decode_all, image_paths

CHUNK = 256  # images decoded and predicted at a time: memory stays flat however many files are given


@dataclass
class Predictor:
    """What turns uint8 (N, 3, S, S) images into (N, classes) probabilities, and how to prepare them."""

    probabilities: Callable[[np.ndarray], np.ndarray]
    image_size: int
    class_names: list[str]
    source: str


def load_predictor(path: str | Path) -> Predictor:
    """A saved ensemble's folder (ensemble.json), or an exported .pt (TorchScript) or .onnx file."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / ENSEMBLE_FILE).is_file():
            raise ConfigError(f"{path} holds no {ENSEMBLE_FILE}: pass the folder `caviar ensemble` wrote (default "
                              "EXPERIMENT/ensemble) or a file `caviar export` wrote")
        from caviar.ensembles.model import Ensemble

        ensemble = Ensemble.load(path)
        classes = int(ensemble.descriptions[0]["num_classes"]) if ensemble.descriptions else 0
        return Predictor(ensemble.predict, ensemble.image_size, _names(ensemble.class_names, classes), str(path))
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: pass an ensemble folder or an exported .pt / .onnx file")
    if path.suffix == ".onnx":
        return _onnx(path)
    if path.suffix == ".pt":
        return _torchscript(path)
    raise ConfigError(f"{path}: expected an ensemble folder, a TorchScript .pt or an ONNX .onnx file "
                      "(`caviar export` writes both)")


def _names(names: list[str], classes: int) -> list[str]:
    return list(names) if names else [str(i) for i in range(classes)]


def _info(text: str | bytes | None, path: Path) -> dict:
    if not text:
        raise ConfigError(f"{path} carries no {METADATA} (exported before files said how to prepare images): "
                          "export the ensemble again with `caviar export`")
    try:
        info = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{path}: its {METADATA} is not JSON ({e})") from None
    if not isinstance(info, dict) or not isinstance(info.get("image_size"), int):
        raise ConfigError(f"{path}: its {METADATA} names no image size; export the ensemble again")
    return info


def _torchscript(path: Path) -> Predictor:
    import torch

    extra = {METADATA: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, ValueError... for a file that is not one
        raise ConfigError(f"{path} is not a TorchScript file torch can load ({type(e).__name__}: {e})") from None
    info = _info(extra[METADATA], path)

    def probabilities(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(images)).double().numpy()

    return Predictor(probabilities, info["image_size"], _names(info.get("class_names") or [], info["classes"]),
                     str(path))


def _onnx(path: Path) -> Predictor:
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("an ONNX file needs onnxruntime: pip install 'caviar[export]'") from None
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ConfigError(f"{path} is not an ONNX file onnxruntime can load ({type(e).__name__}: {e})") from None
    info = _info(session.get_modelmeta().custom_metadata_map.get(METADATA), path)
    entry = session.get_inputs()[0]
    as_float = "float" in entry.type  # exported with --input float: 0..1 floats

    def probabilities(images: np.ndarray) -> np.ndarray:
        x = images.astype(np.float32) / 255 if as_float else images
        return session.run(None, {entry.name: x})[0].astype(np.float64)

    return Predictor(probabilities, info["image_size"], _names(info.get("class_names") or [], info["classes"]),
                     str(path))


def image_files(paths: list[str | Path]) -> list[Path]:
    """The image files named, a folder's images (nested folders included, hidden ones left out) in
    sorted order; a path that does not exist, or a file that is not an image, is a ConfigError."""
    files: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            found = image_paths(path)
            if not found:
                raise ConfigError(f"{path} holds no image files ({' '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise ConfigError(f"{path} is not an image file (read are {' '.join(IMAGE_EXTENSIONS)})")
            files.append(path)
        else:
            raise ConfigError(f"{path} does not exist")
    if not files:
        raise ConfigError("no image files given: pass image files or folders of them")
    return files


def predict_files(model: str | Path | Predictor, paths: list[str | Path], top: int = 3) -> pd.DataFrame:
    """One row per image file: `file`, then the `top` classes by name with their probabilities
    (`class_1`, `prob_1`, ...), most probable first."""
    if top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    files = image_files(paths)
    predictor = model if isinstance(model, Predictor) else load_predictor(model)
    classes = len(predictor.class_names)
    top = min(top, classes)
    rows = []
    for start in range(0, len(files), CHUNK):
        chunk = files[start:start + CHUNK]
        probs = predictor.probabilities(decode_all(chunk, predictor.image_size))
        if probs.shape != (len(chunk), classes):
            raise ConfigError(f"{predictor.source} gave probabilities of shape {probs.shape} for {len(chunk)} images "
                              f"of {classes} classes")
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
        for file, p, best in zip(chunk, probs, order):
            row = {"file": str(file)}
            for k, index in enumerate(best, 1):
                row |= {f"class_{k}": predictor.class_names[index], f"prob_{k}": float(p[index])}
            rows.append(row)
    return pd.DataFrame(rows)
