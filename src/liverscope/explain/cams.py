"""Class activation maps (CAMs): which part of the scan made the model say what it said.

Every liverscope model is a :class:`~liverscope.models.registry.LiverNet` whose ``cam_layer`` (an
identity on the backbone's last feature map) is where every CAM method hooks, whatever the backbone
(ResNets, the CBAM ResNet, DenseNet with its in-place ReLUs, EfficientNets, MobileNets): the hooked
tensor is the backbone's output, which nothing downstream modifies in place.

The methods are pytorch-grad-cam's (:data:`CAM_METHODS`): Grad-CAM (default), Grad-CAM++, HiResCAM,
EigenCAM and LayerCAM. liverscope adds what ultrasound needs around them:

* **the scan sector**: text, calibration marks and the black border outside the fan are not tissue, so
  by default a map is set to zero outside the sector (:func:`~liverscope.data.preprocess.sector_mask`
  of the model input) and min-max normalised over the sector's pixels only;
* :func:`energy_outside_sector`: the share of the (unrestricted) map's energy that falls outside the fan
  — a model that looks at text or borders is reading the scanner, not the liver; it and the numbers
  that compare two methods (deletion AUC, ROAD) live in :mod:`liverscope.explain.faithfulness`;
* hooks are released after every call (pytorch-grad-cam's context manager), and gradient methods
  back-propagate through the head only (:class:`HeadGradOnly`: the same map at about the cost of one
  forward pass);
* ``layers``: maps from a shallower backbone stage (finer than the last feature map: 4x4 for resnet10t
  at 128 px) or from several stages averaged (a multi-scale CAM); stages are timm's ``feature_info``
  (:func:`cam_stages`, :func:`resolve_layers`);
* :func:`liverscope.explain.files.explain_paths` (the ``liverscope explain`` command) writes heatmaps,
  overlays on the original image at its original size, the maps as ``.npy`` and ``cams.csv``, with the
  probabilities of the run's :class:`~liverscope.inference.predict.Predictor`;
  :func:`liverscope.explain.gallery.write_cam_gallery` writes the report's gallery of correct and wrong test cases.

Python use::

    from liverscope.explain.cams import compute_cams
    cams, classes = compute_cams(model, preprocessed_images, pp, method="gradcam++")
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch
from torch import nn

from liverscope.data.sector import sector_mask
from liverscope.errors import LiverscopeError
from liverscope.evaluate.masks import is_flat
from liverscope.explain.faithfulness import energy_outside_sector, input_tensor, model_device
from liverscope.explain.images import overlay
from liverscope.utils import default_model_threads, torch_threads

logger = logging.getLogger(__name__)

#: Method name → pytorch-grad-cam class name (the classes are imported on first use: see :data:`CAM_METHODS`).
_METHOD_CLASSES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "eigencam": "EigenCAM",
    "layercam": "LayerCAM",
}
DEFAULT_METHOD = "gradcam"
#: How each method is named in captions and tables.
METHOD_NAMES = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "hirescam": "HiResCAM",
    "eigencam": "EigenCAM",
    "layercam": "LayerCAM",
}
# CAM methods hook the model's cam_layer, and a hook sees every forward pass through it, whichever thread
# made it (the app serves every browser session from its own thread, all sharing one cached model):
# cam_overlay computes one map at a time so that no caller's map mixes in another's activations.
_CAM_LOCK = threading.Lock()
#: The per-image columns that ``explain_paths(with_faithfulness=True)`` adds (keys of :func:`~liverscope.explain.faithfulness.faithfulness`).
FAITHFULNESS_COLUMNS = ("deletion_auc", "road", "road_morf", "road_lerf")


def __getattr__(name: str):
    # CAM_METHODS is built on first use: importing pytorch-grad-cam costs ~2 s (matplotlib, sklearn),
    # which the app and the CLI should not pay unless they compute a map.
    if name == "CAM_METHODS":
        return _cam_methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.lru_cache(maxsize=1)
def _cam_methods() -> dict[str, type]:
    import pytorch_grad_cam

    return {name: getattr(pytorch_grad_cam, cls) for name, cls in _METHOD_CLASSES.items()}


def method_key(name: str) -> str:
    """The key of :data:`CAM_METHODS` a method name means (``Grad-CAM++``, ``gradcam_plusplus`` → ``gradcam++``)."""
    key = str(name).lower().replace("_", "").replace("-", "").replace("plusplus", "++")
    if key not in _METHOD_CLASSES:
        raise LiverscopeError(f"unknown CAM method '{name}'; choose from {', '.join(_METHOD_CLASSES)}")
    return key


def cam_method(name: str) -> type:
    """The pytorch-grad-cam class of a method name (see :data:`CAM_METHODS`)."""
    return _cam_methods()[method_key(name)]


@functools.lru_cache(maxsize=None)
def _recording(cls: type) -> type:
    """``cls`` keeping the maps of its call (one per target layer, in forward order) before
    pytorch-grad-cam's per-image min-max scaling and its average over layers.

    ``get_cam_image`` is the library's extension point (every method implements or inherits it); the
    raw map is what energy shares need (the library's scaled map has its minimum subtracted) and what
    sector-wise normalisation starts from. The caller sets ``raw_maps = []`` before each call.
    """

    class Recording(cls):
        raw_maps: list

        def get_cam_image(self, *args, **kwargs):
            cam = super().get_cam_image(*args, **kwargs)
            self.raw_maps.append(np.asarray(cam, dtype=np.float32))
            return cam

    Recording.__name__ = Recording.__qualname__ = cls.__name__
    return Recording


class HeadGradOnly(nn.Module):
    """A LiverNet seen by a CAM method so that Grad-CAM at ``cam_layer`` back-propagates through the head only.

    Grad-CAM at the last feature map needs d(class score)/d(feature map), which depends on the head
    alone; pytorch-grad-cam's ``backward()`` would otherwise run through the whole backbone (~3x the
    cost of the forward pass on a CPU). Here the backbone runs without autograd, its feature map becomes
    a leaf that requires grad, and the library hooks ``cam_layer`` as usual: the same activations and
    gradients, so the same map (tested), at about the cost of one forward pass.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.net.backbone.forward_features(x)
        return self.net.forward_head(self.net.cam_layer(features.detach().requires_grad_(True)))


# --- Maps ------------------------------------------------------------------------------------------


@dataclass
class CamBatch:
    """Maps of a batch of images (all arrays at the model input's resolution ``H x W``).

    Attributes:
        cams: float32 ``N x H x W`` in [0, 1]: min-max normalised inside the sector (and zero outside it)
            when restricted, over the whole image otherwise.
        raw: float32 ``N x H x W`` ≥ 0: the method's map after its ReLU, upsampled, before any
            normalisation or restriction (what :func:`energy_outside_sector` measures); with several
            layers the mean of their maps each scaled to peak 1 (``cams``: the mean of the layers'
            normalised maps, normalised again).
        sectors: bool ``N x H x W``: the scan sector of each input.
        targets: int ``N``: the class each map explains.
        logits: float32 ``N x K``: the model's logits for the inputs.
    """

    cams: np.ndarray
    raw: np.ndarray
    sectors: np.ndarray
    targets: np.ndarray
    logits: np.ndarray

    @property
    def energy_outside(self) -> np.ndarray:
        """Per image: share of the raw map's energy outside the sector."""
        return np.array(
            [energy_outside_sector(r, s) for r, s in zip(self.raw, self.sectors)], dtype=np.float32
        )


def _upsample(maps: np.ndarray, h: int, w: int) -> np.ndarray:
    """ReLU then bilinear resize of ``N x h' x w'`` maps to ``h x w`` (pytorch-grad-cam's order).

    Not ``pytorch_grad_cam.utils.image.scale_cam_image``: it resizes with the same bilinear
    interpolation (the same numbers on a [0, 1] map, tested) but always min-max normalises first, and
    the energy share outside the sector needs the raw map (subtracting its minimum changes the share).
    """
    maps = np.maximum(np.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0), 0).astype(np.float32)
    return np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in maps]).clip(min=0)


def normalise_in_region(cam: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """Min-max normalise a map over ``region`` (default: everywhere); zero outside it.

    A map that is constant over the region (nothing stands out) becomes all zero; constant up to float
    rounding counts (:func:`~liverscope.evaluate.masks.is_flat`): a map from rounding ripples would
    differ between CPUs.

    Not ``scale_cam_image``, which divides by ``max - min + 1e-7`` over the whole array: a map then
    tops out at ``1 - 1e-7 / (max - min)`` (0.9997 for an untrained model's Grad-CAM range of 3e-4,
    measured), so ``>= 0.5`` pseudo-masks and "the map reaches 1" would depend on the map's scale;
    here min-max is scale-free, and only the region's pixels count.
    """
    cam = np.asarray(cam, dtype=np.float32)
    if region is None:
        region = np.ones(cam.shape, bool)
    out = np.zeros_like(cam)
    if not region.any():
        return out
    vals = cam[region]
    lo, hi = float(vals.min()), float(vals.max())
    if not is_flat(lo, hi):
        out[region] = (vals - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0)


def _cam_view(model: nn.Module) -> nn.Module:
    """What the CAM object runs: a LiverNet through :class:`HeadGradOnly`, anything else as is."""
    if all(hasattr(model, a) for a in ("backbone", "forward_head", "cam_layer")) and hasattr(
        model.backbone, "forward_features"
    ):
        return HeadGradOnly(model)
    return model


def cam_stages(model: nn.Module) -> list[str]:
    """Module names (under ``model.backbone``) of the backbone's stages, shallow to deep, from timm's
    ``feature_info`` (``layer1``..``layer4`` for ResNets, ``blocks.N`` for EfficientNets); ``[]`` without one."""
    info = getattr(getattr(model, "backbone", None), "feature_info", None) or []
    if hasattr(info, "module_name"):  # timm's FeatureInfo (a features_only model)
        return [info.module_name(i) for i in range(len(info))]
    return [str(d["module"]) for d in info if isinstance(d, dict) and "module" in d]


def resolve_layers(
    model: nn.Module, layers: str | int | Sequence[str | int] | None
) -> list[tuple[str, nn.Module]] | None:
    """The ``(name, module)`` pairs of a ``layers`` option, shallow to deep (pytorch-grad-cam pairs target
    layers with activations in forward order); ``None`` for the last feature map alone (the fast path).

    Args:
        layers: ``None`` / ``"last"``: ``model.cam_layer``; or stages of :func:`cam_stages` by name or
            index (``-2``: second-to-last), ``"last"`` among them: a sequence or comma-separated string.

    Raises:
        LiverscopeError: a name or index that is not a stage (the message lists the stages).
    """
    if layers is None:
        return None
    items = (
        layers.split(",")
        if isinstance(layers, str)
        else [layers]
        if isinstance(layers, (int, np.integer))
        else list(layers)
    )
    stages = cam_stages(model)
    n, keys = len(stages), set()
    for item in items or [""]:
        text = str(item).strip()
        if text.lower() == "last":
            keys.add(n)  # after every stage
        elif text.removeprefix("-").isdigit() and -n <= int(text) < n:
            keys.add(int(text) % n)
        elif text in stages:
            keys.add(stages.index(text))
        else:
            raise LiverscopeError(
                f"CAM layer '{text}' is not a stage of this {type(getattr(model, 'backbone', model)).__name__}: choose from last"
                + (
                    f", {', '.join(stages)} or an index -{n}..{n - 1}"
                    if n
                    else " (its backbone lists no stages)"
                )
            )
    if keys == {n}:
        return None
    return [
        ("last", model.cam_layer) if k == n else (stages[k], model.backbone.get_submodule(stages[k]))
        for k in sorted(keys)
    ]


def _maps_once(
    model: nn.Module,
    x: torch.Tensor,
    targets: Sequence[int] | None,
    method: str,
    layers: list[tuple[str, nn.Module]] | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Raw maps (feature resolution, one per layer) and logits of one batch; the hooks live only inside this call.

    The last feature map alone back-propagates through the head only (:class:`HeadGradOnly`); other
    layers need the gradient through the backbone, so the model runs as is.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = _recording(cam_method(method))
    tgt = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
    if layers is None:
        view, hooked = _cam_view(model), [model.cam_layer]
    else:  # an input that requires grad: a frozen backbone's stages still get gradients
        view, hooked, x = model, [m for _, m in layers], x.detach().requires_grad_(True)
    with torch.enable_grad(), cls(model=view, target_layers=hooked) as cam:
        cam.raw_maps = []
        try:
            cam(input_tensor=x, targets=tgt)
        except IndexError as exc:  # pytorch-grad-cam's __exit__ would swallow (and print) an IndexError
            raise RuntimeError(f"CAM failed: {exc}") from exc
        raws, logits = cam.raw_maps, cam.outputs.detach().float().cpu().numpy()
        cam.raw_maps = []
    if len(raws) != len(hooked):  # a layer the forward pass never reached
        raise RuntimeError(
            f"{method}: {len(raws)} map(s) for {len(hooked)} layer(s) (is every layer part of the forward pass?)"
        )
    return raws, logits


def _combine(maps: np.ndarray, region: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(raw, cam)`` of one image from its ``L x H x W`` upsampled maps (one per layer): see :class:`CamBatch`."""
    if len(maps) == 1:
        return maps[0], normalise_in_region(maps[0], region)
    raw = np.mean([m / m.max() if m.max() > 0 else m for m in maps], axis=0)
    return raw.astype(np.float32), normalise_in_region(
        np.mean([normalise_in_region(m, region) for m in maps], axis=0), region
    )


def explain_batch(
    model: nn.Module,
    images: Sequence[np.ndarray],
    pp,
    targets: Sequence[int] | None = None,
    method: str = DEFAULT_METHOD,
    restrict_to_sector: bool = True,
    batch_size: int = 16,
    aug_smooth_flip: bool = False,
    sectors: Sequence[np.ndarray] | None = None,
    layers: str | int | Sequence[str | int] | None = None,
) -> CamBatch:
    """Maps and everything around them for preprocessed images; see :func:`compute_cams`.

    Args:
        sectors: bool ``H x W`` scan-sector masks of the inputs (default: :func:`sector_mask` of each
            input; pass masks carried from the full-resolution image with
            :func:`liverscope.data.geometry.to_model` when the input is too small to find the fan).

    Returns:
        A :class:`CamBatch`.
    """
    method = method_key(method)
    resolved = resolve_layers(model, layers)
    n = len(images)
    if n == 0:
        z = np.zeros((0, pp.size, pp.size), np.float32)
        return CamBatch(z, z.copy(), z.astype(bool), np.zeros(0, int), np.zeros((0, 0), np.float32))
    if targets is not None and len(targets) != n:
        raise ValueError(f"{len(targets)} targets for {n} images")
    n_classes = getattr(model, "num_classes", None)
    if (
        targets is not None
        and n_classes is not None
        and any(not 0 <= int(t) < int(n_classes) for t in targets)
    ):
        raise ValueError(
            f"target classes {sorted(set(int(t) for t in targets))} out of range for a {n_classes}-class model"
        )
    if sectors is not None and len(sectors) != n:
        raise ValueError(f"{len(sectors)} sector masks for {n} images")
    batch_size = max(1, int(batch_size))
    device, was_training = model_device(model), model.training
    model.eval()
    raws, logits_all, target_all = [], [], []
    try:
        for i in range(0, n, batch_size):
            chunk = images[i : i + batch_size]
            h, w = chunk[0].shape[:2]
            x = input_tensor(chunk, pp, device)
            tgt = None if targets is None else [int(t) for t in targets[i : i + batch_size]]
            maps, logits = _maps_once(model, x, tgt, method, resolved)
            if tgt is None:
                tgt = [int(k) for k in np.argmax(logits, axis=1)]
            up = [_upsample(m, h, w) for m in maps]
            if aug_smooth_flip:  # the mirrored scan, explained for the same classes, mirrored back
                flipped, _ = _maps_once(model, torch.flip(x, dims=[3]), tgt, method, resolved)
                up = [0.5 * (u + _upsample(f, h, w)[:, :, ::-1]) for u, f in zip(up, flipped)]
            raws.append(np.stack(up, axis=1))  # N x layers x H x W
            logits_all.append(logits)
            target_all.extend(tgt)
    finally:
        model.zero_grad(set_to_none=True)  # the head's gradients from the CAM's backward pass
        model.train(was_training)
    per_layer = np.concatenate(raws).astype(np.float32)
    sec = (
        np.stack([sector_mask(im) for im in images])
        if sectors is None
        else np.stack([np.asarray(s, bool) for s in sectors])
    )
    if sec.shape != (n, *per_layer.shape[2:]):
        raise ValueError(f"sector masks {sec.shape[1:]} do not match the inputs {per_layer.shape[2:]}")
    raw, cams = (
        np.stack(a).astype(np.float32)
        for a in zip(*(_combine(m, s if restrict_to_sector else None) for m, s in zip(per_layer, sec)))
    )
    return CamBatch(
        cams, raw, sec, np.asarray(target_all, dtype=int), np.concatenate(logits_all).astype(np.float32)
    )


def compute_cams(
    model: nn.Module,
    images: Sequence[np.ndarray],
    pp,
    targets: Sequence[int] | None = None,
    method: str = DEFAULT_METHOD,
    restrict_to_sector: bool = True,
    batch_size: int = 16,
    aug_smooth_flip: bool = False,
    layers: str | int | Sequence[str | int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class activation maps of preprocessed images.

    Args:
        model: a :class:`~liverscope.models.registry.LiverNet` (maps are taken at its ``cam_layer``
            unless ``layers`` says otherwise).
        images: model inputs, uint8 ``H x W x 3`` as returned by
            :func:`~liverscope.data.preprocess.preprocess_array`.
        pp: the run's :class:`~liverscope.data.preprocess.Preprocessing` (mean/std).
        targets: class index to explain per image; ``None`` = the predicted class.
        method: a key of :data:`CAM_METHODS`.
        restrict_to_sector: zero the map outside the scan sector and normalise over the sector only.
        batch_size: images per forward/backward pass.
        aug_smooth_flip: average each map with the (mirrored back) map of the horizontally flipped
            image, explained for the same class.
        layers: where the maps are taken (:func:`resolve_layers`): ``None`` / ``"last"``: the last
            feature map (the gradient runs through the head only); a shallower stage (``"layer3"``,
            ``"blocks.4"``, ``-2``) gives a finer map (the gradient runs through the backbone: slower);
            several stages give a *multi-scale CAM*: each layer's map is upsampled to the input size and
            normalised (in the sector when restricted), the maps are averaged and normalised again.

    Returns:
        ``(cams, classes)``: float32 ``N x H x W`` in [0, 1] (zero outside the sector when restricted,
        each map min-max normalised inside it) and the explained class of each image (int ``N``).
    """
    b = explain_batch(
        model, images, pp, targets, method, restrict_to_sector, batch_size, aug_smooth_flip, layers=layers
    )
    return b.cams, b.targets


def cam_overlay(model, model_input: np.ndarray, pp, class_index: int) -> np.ndarray:
    """Grad-CAM of ``class_index`` over one preprocessed image, restricted to the scan sector and
    blended onto the image (RGB uint8, the input's size). Used by the app: safe to call from several
    threads on one shared model (one map at a time)."""
    with _CAM_LOCK, torch_threads(default_model_threads()):
        b = explain_batch(model, [model_input], pp, [int(class_index)], DEFAULT_METHOD, True, 1)
    return overlay(model_input, b.cams[0], b.sectors[0] if b.sectors[0].any() else sector_mask(model_input))


__all__ = [
    "CAM_METHODS",  # noqa: F822  (built on first use by the module's __getattr__)
    "DEFAULT_METHOD",
    "METHOD_NAMES",
    "CamBatch",
    "HeadGradOnly",
    "compute_cams",
    "explain_batch",
    "cam_overlay",
    "cam_stages",
    "resolve_layers",
    "normalise_in_region",
    "cam_method",
    "method_key",
]
