"""Network definitions of the bundle (importable as ``scripts.networks``)."""

from .blocks import ResidualBlock, SeparableConv, SkipAdapter, conv_layer
from .resunet import ResUNet

__all__ = ["ResUNet", "ResidualBlock", "SeparableConv", "SkipAdapter", "conv_layer"]
