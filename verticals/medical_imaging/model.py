"""Model factories of the imaging vertical, resolved by name through :data:`MODELS`.

Normalization under MAML's functional inner loop: the meta-learning algorithms run the model through
``torch.func.functional_call`` inside ``grad`` and ``vmap`` over clients. BatchNorm's running statistics
are buffers updated in place during the forward pass, which ``vmap`` cannot batch and which would leak
one client's statistics into the next. Every factory therefore builds its normalization from
:data:`NORMS`:

- ``group`` (default): GroupNorm with up to 8 groups (the largest of 8, 4, 2, 1 dividing the channels).
  Per-sample statistics: predictions do not depend on what else is in the batch. Wu & He 2018.
- ``instance``: GroupNorm with one group per channel (= affine InstanceNorm).
- ``batch``: BatchNorm with ``track_running_stats=False``: statistics of the CURRENT batch at training
  and at test time (no running buffers, so vmap-safe), but a prediction then depends on the other images
  scored with it; kept for comparison only.

Every model is built with ``pretrained=False``: no weights are downloaded (none can be, offline).

Names: ``small_cnn`` (default, 3 conv blocks, ~24k parameters at width 16), ``resnet18`` and
``efficientnet_b0`` (timm, ``in_chans`` set from the data), ``timm:<any timm model name>``,
``monai_classifier`` (MONAI ``Classifier``: residual conv units) and ``monai_densenet`` (a small MONAI
``DenseNet``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from torch import nn

from core.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """What a factory needs.

    Args:
        name: registered model name.
        in_channels: image channels (1 gray, 3 RGB).
        num_classes: output classes.
        image_size: square input size in pixels.
        width: base channel count of the small models (``small_cnn``, MONAI nets).
        norm: normalization (``group`` | ``instance`` | ``batch``; see module docstring).
    """

    name: str
    in_channels: int
    num_classes: int
    image_size: int = 28
    width: int = 16
    norm: str = "group"


def _groups(channels: int, most: int = 8) -> int:
    return next(g for g in range(min(most, channels), 0, -1) if channels % g == 0)


#: norm name -> ``make(num_channels) -> nn.Module`` (for plain PyTorch / timm ResNet layers).
NORMS: Registry[Callable[[int], nn.Module]] = Registry("normalization")
NORMS.register("group", lambda c: nn.GroupNorm(_groups(c), c))
NORMS.register("instance", lambda c: nn.GroupNorm(c, c))
NORMS.register("batch", lambda c: nn.BatchNorm2d(c, track_running_stats=False))


class _TimmNorm(nn.Module):
    """Adapter so timm's ``norm_layer(num_channels, **kwargs)`` builds a layer from :data:`NORMS`."""

    def __new__(cls, num_channels: int, norm: str = "group", **_: object) -> nn.Module:  # type: ignore[misc]
        return NORMS.get(norm)(num_channels)


def small_cnn(spec: ModelSpec) -> nn.Module:
    """Three 3x3 conv blocks (width w, 2w, 4w) with normalization and ReLU, max-pool after the first two,
    global average pooling and a linear head. Any input size >= 4 pixels."""
    w, norm = spec.width, NORMS.get(spec.norm)
    return nn.Sequential(
        nn.Conv2d(spec.in_channels, w, 3, padding=1), norm(w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1), norm(2 * w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 4 * w, 3, padding=1), norm(4 * w), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, spec.num_classes),
    )


def _timm_norm_act(norm: str):
    """timm's norm+activation layer for EfficientNet-style models (they fuse norm and activation)."""
    from timm.layers import BatchNormAct2d, GroupNormAct

    table = {
        "group": partial(GroupNormAct, num_groups=8),
        "instance": partial(GroupNormAct, num_groups=1, group_size=1),
        "batch": partial(BatchNormAct2d, track_running_stats=False),
    }
    NORMS.get(norm)  # unknown names fail with the list of choices
    return table[norm]


def timm_model(timm_name: str, spec: ModelSpec) -> nn.Module:
    """A timm model with ``pretrained=False``, ``in_chans`` from the data and vmap-safe normalization."""
    import timm

    if not timm.is_model(timm_name):
        raise ValueError(f"timm has no model {timm_name!r}; see timm.list_models()")
    fused = any(k in timm_name for k in ("efficientnet", "mixnet"))
    norm_layer = _timm_norm_act(spec.norm) if fused else partial(_TimmNorm, norm=spec.norm)
    try:
        return timm.create_model(timm_name, pretrained=False, in_chans=spec.in_channels, num_classes=spec.num_classes,
                                 norm_layer=norm_layer, drop_rate=0.0)
    except TypeError as err:
        raise ValueError(f"timm model {timm_name!r} does not accept a norm_layer override ({err}); its BatchNorm "
                         "running statistics cannot run under vmap. Use resnet*/efficientnet*/a registered model") from None


def _monai_norm(spec: ModelSpec):
    table = {"group": ("group", {"num_groups": _groups(spec.width, 4)}), "instance": ("instance", {"affine": True}),
             "batch": ("batch", {"track_running_stats": False})}
    NORMS.get(spec.norm)
    return table[spec.norm]


def monai_classifier(spec: ModelSpec) -> nn.Module:
    from monai.networks.nets import Classifier

    w = spec.width
    return Classifier(in_shape=(spec.in_channels, spec.image_size, spec.image_size), classes=spec.num_classes,
                      channels=(w, 2 * w, 4 * w), strides=(2, 2, 2), num_res_units=1, norm=_monai_norm(spec))


def monai_densenet(spec: ModelSpec) -> nn.Module:
    from monai.networks.nets import DenseNet

    return DenseNet(spatial_dims=2, in_channels=spec.in_channels, out_channels=spec.num_classes,
                    init_features=spec.width, growth_rate=max(4, spec.width // 2), block_config=(2, 2, 2),
                    act=("relu", {"inplace": False}), norm=_monai_norm(spec))


MODELS: Registry[Callable[[ModelSpec], nn.Module]] = Registry("imaging model")
MODELS.register("small_cnn", small_cnn)
MODELS.register("resnet18", partial(timm_model, "resnet18"))
MODELS.register("efficientnet_b0", partial(timm_model, "efficientnet_b0"))
MODELS.register("monai_classifier", monai_classifier)
MODELS.register("monai_densenet", monai_densenet)

TIMM_PREFIX = "timm:"


def build_model(spec: ModelSpec) -> nn.Module:
    """The model named ``spec.name`` (a registered name, or ``timm:<name>`` for any timm model)."""
    if spec.name.startswith(TIMM_PREFIX):
        return timm_model(spec.name[len(TIMM_PREFIX):], spec)
    return MODELS.get(spec.name)(spec)
