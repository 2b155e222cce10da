"""A trained nnU-Net as a liverscope segmenter (:class:`NnUNetNetwork`): a torch module whose weights
are nnU-Net's, whose ``forward`` is nnU-Net's own predictor, saved and loaded behind the segmenter
contract like any other network (:func:`build_nnunet` from the architecture record :func:`nnunet_arch`).
Training it is :mod:`liverscope.segment.nnunet`.
"""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import torch

from liverscope.errors import LiverscopeError
from liverscope.utils import import_optional

#: The architecture record's name of an nnU-Net segmenter (``segmenter.json``).
NNUNET_ARCH = "nnunetv2"
CONFIGURATION = "2d"
#: nnU-Net takes the grey values themselves (it normalises each image with its plans' z-score): the
#: segmenter's input scaling (x/255 - mean) / std is the identity.
PIXELS = {"mean": 0.0, "std": 1.0 / 255.0}


def nnunet_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nnunetv2")
    except PackageNotFoundError:  # pragma: no cover - an uninstalled checkout
        return "?"


def _identity(v: torch.Tensor) -> tuple:
    """What makes two names of a state dict the same tensor (an empty tensor is only itself)."""
    return (v.data_ptr(), v.dtype, tuple(v.shape), tuple(v.stride())) if v.numel() else ("empty", id(v))


def unique_tensors(state: dict) -> dict:
    """A state dict with each tensor once, under its first name: nnU-Net's networks register some modules
    twice (``decoder.encoder`` is ``encoder``; ``all_modules`` holds ``conv`` and ``norm``), and
    safetensors stores a tensor once. :meth:`NnUNetNetwork.load_state_dict` puts the other names back."""
    seen, out = set(), {}
    for k, v in state.items():
        key = _identity(v)
        if key not in seen:
            seen.add(key)
            out[k] = v
    return out


# --------------------------------------------------------------------------------------------------
# the trained network as a liverscope segmenter
# --------------------------------------------------------------------------------------------------


def nnunet_arch(trained: dict) -> dict:
    """The architecture record (``segmenter.json``) of a trained nnU-Net: everything that rebuilds it."""
    return {
        "name": NNUNET_ARCH,
        "trainer": trained["trainer"],
        "base_trainer": trained["base_trainer"],
        "configuration": CONFIGURATION,
        "plans": trained["plans"],
        "dataset_json": trained["dataset_json"],
        "mirror_axes": list(trained["mirror_axes"]),
        "in_channels": 1,
        "out_channels": 1,
        "strides": [1],
        "normalisation": dict(PIXELS),
        "nnunet_version": trained.get("nnunet_version"),
    }


@contextlib.contextmanager
def _quiet():
    """nnU-Net prints notices on stdout (unset folders at import, the predictor's device): kept off a command's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


class NnUNetNetwork(torch.nn.Module):
    """nnU-Net's trained network behind liverscope's segmenter contract.

    ``forward`` takes ``N x 1 x H x W`` grey values 0-255 (:data:`PIXELS`) and returns ``N x 1 x H x W``
    foreground logits, ``log(p / (1 - p))`` of nnU-Net's probability ``p``: each image goes through
    ``nnUNetPredictor.predict_single_npy_array`` (nnU-Net's normalisation, sliding window, Gaussian
    weighting and mirroring), so ``sigmoid`` of the output is nnU-Net's own foreground probability.
    """

    def __init__(self, arch: dict):
        super().__init__()
        import_optional("nnunetv2", "nnunet", "An nnU-Net segmenter")
        with _quiet():
            import nnunetv2
            from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
            from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
            from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

            trainer_cls = recursive_find_python_class(
                os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"),
                arch["base_trainer"],
                "nnunetv2.training.nnUNetTrainer",
            )  # imports nnU-Net's trainers as it searches
        self.arch = arch
        self.plans_manager = PlansManager(arch["plans"])
        self.configuration_manager = self.plans_manager.get_configuration(arch["configuration"])
        if trainer_cls is None:
            raise LiverscopeError(
                f"nnU-Net {nnunet_version()} has no trainer class {arch['base_trainer']!r} (the segmenter was trained with "
                f"nnunetv2 {arch.get('nnunet_version')})"
            )
        n_in = determine_num_input_channels(
            self.plans_manager, self.configuration_manager, arch["dataset_json"]
        )
        n_out = self.plans_manager.get_label_manager(arch["dataset_json"]).num_segmentation_heads
        self.network = trainer_cls.build_network_architecture(
            self.plans_manager, self.configuration_manager, n_in, n_out, enable_deep_supervision=False
        )
        self._predictors: dict = {}

    def state_dict(self, *args, **kwargs) -> dict:
        """The network's tensors, each once (:func:`unique_tensors`): what ``segmenter.safetensors`` holds."""
        return unique_tensors(self.network.state_dict(*args, **kwargs))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load :meth:`state_dict`'s tensors; a name it left out takes the tensor of the first name of the same tensor."""
        full = self.network.state_dict()
        first = {_identity(v): k for k, v in reversed(list(full.items()))}  # reversed: the first name wins
        expanded = {
            k: state_dict[first[_identity(v)]] for k, v in full.items() if first[_identity(v)] in state_dict
        }
        return self.network.load_state_dict(expanded, strict=strict, assign=assign)

    def _predictor(self, device: torch.device):
        if device not in self._predictors:
            with _quiet():
                from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

                self._predictors[device] = nnUNetPredictor(
                    tile_step_size=0.5,
                    use_gaussian=True,
                    use_mirroring=True,
                    perform_everything_on_device=device.type == "cuda",
                    device=device,
                    verbose=False,
                    verbose_preprocessing=False,
                    allow_tqdm=False,
                )
        predictor = self._predictors[device]
        predictor.manual_initialization(
            self.network,
            self.plans_manager,
            self.configuration_manager,
            [self.network.state_dict()],
            self.arch["dataset_json"],
            self.arch["trainer"],
            tuple(self.arch["mirror_axes"]) or None,
        )
        return predictor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        predictor = self._predictor(next(self.network.parameters()).device)
        pixels = np.rint(x.detach().float().cpu().numpy()).clip(0, 255).astype(np.float32)
        out = []
        for img in pixels:  # C x H x W → nnU-Net's 2-D layout C x 1 x H x W (NaturalImage2DIO)
            _, probs = predictor.predict_single_npy_array(
                img[:, None], {"spacing": [999.0, 1.0, 1.0]}, None, None, True
            )
            p = np.clip(
                1.0 - np.asarray(probs, np.float64)[0, 0], 1e-7, 1 - 1e-7
            )  # foreground: anything but background
            out.append(np.log(p) - np.log1p(-p))
        return torch.from_numpy(np.stack(out).astype(np.float32))[:, None].to(x.device)


def build_nnunet(arch: dict) -> NnUNetNetwork:
    """The untrained network of an nnU-Net architecture record (the weights come from ``segmenter.safetensors``)."""
    return NnUNetNetwork(arch)
