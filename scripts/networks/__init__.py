"""Network definitions of the bundle (importable as ``scripts.networks``)."""

from .blocks import InvertedResidual, ResidualBlock, SeparableConv, SkipAdapter, conv_layer, conv_norm_act
from .placement import place, plain
from .resunet import ResUNet
from .student import StudentUNet
from .swin import SwinResUNet, SwinStage

__all__ = [
    "InvertedResidual",
    "ResUNet",
    "ResidualBlock",
    "SeparableConv",
    "SkipAdapter",
    "StudentUNet",
    "SwinResUNet",
    "SwinStage",
    "conv_layer",
    "conv_norm_act",
    "place",
    "plain",
]
