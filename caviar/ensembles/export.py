"""`caviar export`: a saved ensemble as one TorchScript or ONNX file that runs without caviar.

The file holds the whole ensemble as one module: pixels in, averaged probabilities out, with the
member weights chosen on validation and the input normalisation the members trained with baked in.
Built with torch's own exporters (torch.jit.script, torch.onnx.export), checked against
`Ensemble.predict` in tests/test_export.py.

Input: NCHW images, (N, 3, S, S) at the size the members trained on (32 for CIFAR), as `Ensemble.predict` takes them: uint8 0..255, or float 0..1
(as torchvision's ToTensor makes), which is rounded to the 256 levels the members trained on.
Output: (N, classes) float32 probabilities, each row summing to 1. Computed in float32 (caviar's own
`predict` uses bfloat16 where the device has it natively, so the two differ by bf16 rounding there).
The file's metadata (caviar.json) says how an image file becomes that input (size, crop) and names
the classes: `caviar predict` reads it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from caviar.ensembles.model import Ensemble
from caviar.ensembles.views import views
from caviar.errors import ConfigError
from caviar.layout import ENSEMBLE_FILE
from caviar.training.data import CIFAR10_MEAN, CIFAR10_STD

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
INPUTS = ("uint8", "float")  # the ONNX graph's input type (a TorchScript module takes either)
OPSET = 18
METADATA = "caviar.json"  # the file's metadata entry: a TorchScript extra file, an ONNX metadata property
PREPROCESS = ("an image file: turned upright by its EXIF orientation, RGB (transparency over black, 16-bit and float "
              "images scaled from their range), shorter side scaled to {size} px (bicubic), centre-cropped to "
              "{size} x {size}; as caviar.training.imagefolder.decode does")


class EnsembleModule(nn.Module):
    """(N, 3, S, S) uint8 0..255 or float 0..1 -> (N, classes) weighted mean of the members' softmax."""

    def __init__(self, models: list[nn.Module], weights: list[float], flip: bool = False,
                 mean: tuple[float, ...] = CIFAR10_MEAN, std: tuple[float, ...] = CIFAR10_STD,
                 translate: bool = False) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)
        # the views each member is averaged over, as the saved ensemble was evaluated (caviar.ensembles.views)
        self.flip, self.translate = flip, translate
        w = torch.tensor([float(v) for v in weights], dtype=torch.float32)
        self.register_buffer("weights", w / w.sum())  # (members,), summing to 1 as selection.combine does
        # Every member trained on the same pixels, normalised by its dataset's statistics
        # (caviar.training.data.normalize); (1, 3, 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            pixels = images.to(torch.float32)
        else:  # 0..1 floats -> the uint8 levels the members saw, as Ensemble.predict does
            pixels = torch.round(torch.clamp(images.to(torch.float32), 0.0, 1.0) * 255.0)
        x = (pixels / 255.0 - self.mean) / self.std
        shown = views(x, self.flip, self.translate)
        probs = []
        for i, member in enumerate(self.members):
            view, weight = shown[0]
            p = torch.softmax(member(view), dim=1) * weight
            for view, weight in shown[1:]:
                p = p + torch.softmax(member(view), dim=1) * weight
            probs.append(p * self.weights[i])
        return torch.stack(probs).sum(dim=0)  # (members, N, classes) -> (N, classes)


def default_out(folder: str | Path, fmt: str) -> Path:
    return Path(folder).expanduser() / f"ensemble{FORMATS[fmt]}"


def check_out(out: Path) -> None:
    """Refuse a file that exists (caviar overwrites nothing) or a folder it cannot write, before any work."""
    if out.exists() or out.is_symlink():
        raise ConfigError(f"--out {out} already exists; caviar does not overwrite files: remove it or pass another "
                          "--out")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist; create it or pass another --out")
    if not os.access(out.parent, os.W_OK):
        raise ConfigError(f"--out {out}: cannot write in {out.parent}; pass another --out")


def export(folder: str | Path, fmt: str = "torchscript", out: str | Path | None = None,
           input_type: str = "uint8") -> Path:
    """Write the ensemble saved in `folder` (by `caviar ensemble`) as one `fmt` file; returns its path."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if input_type not in INPUTS:
        raise ConfigError(f"--input {input_type!r}: expected one of {', '.join(INPUTS)}")
    folder = Path(folder).expanduser()
    if not (folder / ENSEMBLE_FILE).is_file():
        raise ConfigError(f"{folder} holds no {ENSEMBLE_FILE}; pass the folder `caviar ensemble` wrote "
                          "(default EXPERIMENT/ensemble)")
    target = Path(out).expanduser() if out is not None else default_out(folder, fmt)
    check_out(target)
    ensemble = Ensemble.load(folder)
    module = EnsembleModule([m.cpu().eval() for m in ensemble.models], list(ensemble.weights),
                            flip=ensemble.flip, mean=ensemble.mean, std=ensemble.std,
                            translate=ensemble.translate).eval()
    module.requires_grad_(False)  # inference only: outputs that need no torch.no_grad() to become numpy
    classes = int(ensemble.descriptions[0]["num_classes"])
    size = int(ensemble.descriptions[0].get("image_size", 32))
    info = {"members": ensemble.names, "weights": [float(w) for w in module.weights], "classes": classes,
            "class_names": ensemble.class_names, "image_size": size,
            "input": f"NCHW (N, 3, {size}, {size}): uint8 0..255 or float 0..1", "output": "(N, classes) probabilities",
            # how an image file becomes that input, as the members' training images did (`caviar predict` reads this)
            "preprocess": PREPROCESS.format(size=size),
            "mirror_averaged": ensemble.flip, "translate_averaged": ensemble.translate, "mean": list(ensemble.mean), "std": list(ensemble.std),
            "source": str(folder.resolve())}
    partial = target.with_name(target.name + ".partial")  # never a half-written file under the final name
    try:
        if fmt == "torchscript":
            _torchscript(module, partial, info)
        else:
            _onnx(module, partial, input_type, size, info)
        if target.exists():  # appeared while exporting: still not ours to replace
            raise ConfigError(f"--out {target} appeared while exporting; the export is left in {partial}")
        os.replace(partial, target)
    finally:
        if partial.exists() and not target.exists():
            partial.unlink()
    return target


def _torchscript(module: EnsembleModule, path: Path, info: dict) -> None:
    # script, not trace: the uint8/float branch stays in the module (a trace would keep one). torch
    # marks TorchScript deprecated in favour of torch.export, whose files need torch to load too; a
    # TorchScript file is what C++ (libtorch) and older serving stacks load, so it stays on offer.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(module)
    scripted.save(str(path), _extra_files={METADATA: json.dumps(info, indent=2)})


def _onnx(module: EnsembleModule, path: Path, input_type: str, size: int, info: dict) -> None:
    # An ONNX graph has one input type: the example's dtype picks the branch of forward.
    example = (torch.zeros(2, 3, size, size, dtype=torch.uint8) if input_type == "uint8"
               else torch.zeros(2, 3, size, size, dtype=torch.float32))
    with torch.no_grad():
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=["images"],
                                    output_names=["probabilities"], opset_version=OPSET, verbose=False,
                                    dynamic_shapes={"images": {0: torch.export.Dim("batch")}})
    program.save(str(path), external_data=False)  # one self-contained file
    import onnx  # the exporter's own dependency

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {METADATA: json.dumps(info, indent=2)})  # what `caviar predict` reads
    onnx.save(model, str(path))
