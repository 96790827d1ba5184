import itertools

import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer

from scripts.inferers import FlipTTAInferer


def test_flip_tta_averages_all_mirrored_predictions():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(4, 3, 3, padding=1)  # not mirror-symmetric, so every flip changes its output
    x = torch.rand(1, 4, 8, 10, 12)
    expected = torch.stack(
        [
            torch.flip(net(torch.flip(x, [a + 2 for a in axes])), [a + 2 for a in axes])
            for n in range(4)
            for axes in itertools.combinations((0, 1, 2), n)
        ]
    ).mean(0)
    with torch.no_grad():
        out = FlipTTAInferer(SimpleInferer())(x, net)
        assert out.shape == (1, 3, 8, 10, 12)
        torch.testing.assert_close(out, expected)
        assert not torch.allclose(out, net(x))


def test_flip_tta_wraps_sliding_window_and_keeps_equivariant_nets_unchanged():
    net = torch.nn.Conv3d(4, 3, 1)  # a 1x1 conv commutes with flips
    x = torch.rand(1, 4, 16, 16, 16)
    sw = SlidingWindowInferer(roi_size=(8, 8, 8), overlap=0.25)
    with torch.no_grad():
        torch.testing.assert_close(FlipTTAInferer(sw, spatial_axes=(0, 2))(x, net), sw(x, net))
