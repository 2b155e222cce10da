"""What a Python caller hands to :meth:`liverscope.inference.predict.Predictor.predict`, turned into the decoded
image a file becomes, and the check of the low-level entry point that takes preprocessed images.

:func:`load_input` accepts a path (image or DICOM file), ``bytes`` (an encoded file), a PIL image, a
NumPy array or a torch tensor, and returns what :func:`~liverscope.data.io.decode_image` returns for a
file: uint8 ``HxW`` (grey) or ``HxWx3`` (RGB). The run's own preprocessing
(:func:`~liverscope.data.preprocess.preprocess_array`) then runs on it exactly as on a file.

Conventions (the same as the files' decoder wherever a file has the same content):

* arrays are channels last: ``HxW`` grey, ``HxWx1``, ``HxWx2`` (grey + alpha), ``HxWx3`` RGB,
  ``HxWx4`` RGBA; alpha is dropped, as PIL's ``convert("RGB")`` drops it for an RGBA file;
* tensors are channels first (torchvision): ``HxW`` or ``CxHxW`` with C = 1, 2, 3 or 4;
* uint8 is taken as it is; 16-bit and other integers are stretched from their minimum to their maximum,
  as a 16-bit PNG/TIFF or a DICOM file is; floats in [0, 1] are intensities (x255, the torchvision and
  scikit-image convention), floats outside it are stretched like 16-bit data.

Torch and PIL are never imported here: a tensor or a PIL image can only exist when the caller has
imported them already.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import numpy as np

from liverscope.data.io import _check_pixels, _to_uint8, decode_image, read_bytes
from liverscope.errors import LiverscopeError

_ARRAYS = "H×W (grey), H×W×3 (RGB) or H×W×4 (RGBA), channels last"


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _is_pil(x: Any) -> bool:
    image = sys.modules.get("PIL.Image")
    return image is not None and isinstance(x, image.Image)


def split_batch(x: Any) -> tuple[list, bool]:
    """``(items, single)``: a list or tuple is a batch, and so is a 4-D array (``NxHxWxC``) or tensor
    (``NxCxHxW``); anything else is one input."""
    if isinstance(x, (list, tuple)):
        return list(x), False
    if (isinstance(x, np.ndarray) or _is_tensor(x)) and x.ndim == 4:
        return list(x), False
    return [x], True


def input_name(x: Any, i: int) -> str:
    """The name a result carries: the path for a file, ``image<i>`` for anything else."""
    return str(x) if isinstance(x, (str, os.PathLike)) else f"image{i}"


def load_input(x: Any, name: str | None = None) -> np.ndarray:
    """Decode any supported input to uint8 ``HxW`` or ``HxWx3``, as :func:`decode_image` decodes a file.

    Raises:
        ImageReadError: an unreadable file or undecodable bytes.
        LiverscopeError: an array, tensor or object of a kind or shape that is not an image.
    """
    if isinstance(x, (str, os.PathLike)):
        return decode_image(read_bytes(x), x)
    name = name or "<input>"
    if isinstance(x, (bytes, bytearray, memoryview)):
        return decode_image(bytes(x), name)
    if _is_pil(x):
        return pil_to_array(x, name)
    if _is_tensor(x):
        return tensor_to_array(x, name)
    if isinstance(x, np.ndarray):
        return array_to_image(x, name)
    raise LiverscopeError(
        f"{name}: cannot read a {type(x).__name__}; expected a path, bytes of an image file, a PIL image, "
        f"a NumPy array ({_ARRAYS}), a torch tensor (H×W or C×H×W) or a list of these"
    )


def array_to_image(arr: np.ndarray, name: str = "<array>") -> np.ndarray:
    """A channels-last array (see the module's conventions) → uint8 ``HxW`` or ``HxWx3``."""
    if arr.ndim == 3 and arr.shape[2] in (1, 2):
        arr = arr[..., 0]  # grey (+ alpha)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]  # RGBA: alpha dropped
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        hint = (
            " (channels first? use arr.transpose(1, 2, 0), or pass a torch tensor)"
            if arr.ndim == 3 and arr.shape[0] in (1, 3, 4)
            else ""
        )
        raise LiverscopeError(
            f"{name}: an array of shape {tuple(arr.shape)} is not an image: expected {_ARRAYS}{hint}"
        )
    _check_pixels(name, arr.shape[0], arr.shape[1])
    kind = arr.dtype.kind
    if kind not in "biuf":
        raise LiverscopeError(
            f"{name}: an array of dtype {arr.dtype} is not an image: expected uint8, uint16 (or another integer) or float"
        )
    if kind == "f":
        if not np.isfinite(arr).all():
            raise LiverscopeError(f"{name}: the array holds NaN or infinite values")
        if arr.size and float(arr.min()) >= 0.0 and float(arr.max()) <= 1.0:
            arr = np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(_to_uint8(arr))


def tensor_to_array(t: Any, name: str = "<tensor>") -> np.ndarray:
    """A channels-first torch tensor (``HxW`` or ``CxHxW``) → uint8 ``HxW`` or ``HxWx3``."""
    t = t.detach().cpu()
    if t.is_floating_point():
        t = t.float()  # bf16/fp16 have no NumPy dtype
    if t.ndim == 3:
        if t.shape[0] not in (1, 2, 3, 4):
            raise LiverscopeError(
                f"{name}: a tensor of shape {tuple(t.shape)} is not an image: tensors are C×H×W (torchvision's "
                "convention) with C = 1, 3 or 4; for H×W×C use tensor.permute(2, 0, 1) or pass tensor.numpy()"
            )
        t = t.permute(1, 2, 0)
    elif t.ndim != 2:
        raise LiverscopeError(
            f"{name}: a tensor of shape {tuple(t.shape)} is not an image: expected H×W or C×H×W (N×C×H×W for a batch)"
        )
    return array_to_image(t.numpy(), name)


def pil_to_array(im: Any, name: str = "<PIL image>") -> np.ndarray:
    """A PIL image → uint8 ``HxW`` or ``HxWx3``, mode by mode as the files' decoder converts them
    (palettes expanded, 16-bit/float stretched, alpha dropped, other colour spaces to RGB)."""
    mode = im.mode
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
        mode = im.mode
    if mode in ("1", "L", "LA"):
        return array_to_image(np.asarray(im.convert("L")), name)
    if mode.startswith("I") or mode == "F":
        return array_to_image(_to_uint8(np.asarray(im)), name)
    return array_to_image(np.asarray(im.convert("RGB")), name)


def check_model_input(
    images: Sequence[Any], size: int, mean: Sequence[float], std: Sequence[float]
) -> list[np.ndarray]:
    """Check images handed to the low-level entry point (:meth:`Predictor.predict_arrays`) against the run.

    Each must be ``size x size x 3`` and either uint8 (preprocessed, not normalised: what
    :meth:`Predictor.prepare` returns) or float32 normalised with the run's ``mean``/``std`` (what
    :func:`~liverscope.data.preprocess.normalise` returns), whose values then lie in the range that
    normalising [0, 1] gives. Anything else, a raw frame above all, is refused.
    """
    lo = (0.0 - np.asarray(mean)) / np.asarray(std) - 1e-3
    hi = (1.0 - np.asarray(mean)) / np.asarray(std) + 1e-3
    out = []
    for i, img in enumerate(images):
        arr = img if isinstance(img, np.ndarray) else None
        shape, dtype = (
            (tuple(arr.shape), str(arr.dtype))
            if arr is not None
            else (getattr(img, "shape", None), type(img).__name__)
        )
        what = (
            f"predict_arrays takes images already preprocessed for this run: uint8 {size}x{size}x3 (Predictor.prepare) "
            f"or float32 {size}x{size}x3 normalised with the run's mean/std; image {i} is {dtype} {shape}"
        )
        fix = "Pass raw frames, files, bytes, PIL images and tensors to Predictor.predict, which applies the run's own preprocessing."
        if arr is None or arr.shape != (size, size, 3) or arr.dtype not in (np.uint8, np.float32):
            raise LiverscopeError(f"{what}. {fix}")
        if arr.dtype == np.float32:
            finite = bool(np.isfinite(arr).all())
            if not finite or (arr.min((0, 1)) < lo).any() or (arr.max((0, 1)) > hi).any():
                span = (
                    f"{float(np.nanmin(arr)):.3g}..{float(np.nanmax(arr)):.3g}"
                    if finite
                    else "NaN/infinite values"
                )
                raise LiverscopeError(
                    f"{what} holding {span}, outside what normalising [0, 1] gives "
                    f"({lo.min():.2f}..{hi.max():.2f}): not normalised. {fix}"
                )
        out.append(arr)
    return out


__all__ = [
    "split_batch",
    "input_name",
    "load_input",
    "array_to_image",
    "tensor_to_array",
    "pil_to_array",
    "check_model_input",
]
