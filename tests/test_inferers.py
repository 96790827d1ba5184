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


def test_flip_tta_batched_flips_equal_one_by_one_on_a_real_network():
    from scripts.networks import ResUNet

    torch.manual_seed(0)
    net = ResUNet(spatial_dims=3, in_channels=4, out_channels=3, channels=[4, 8, 16], strides=[1, 2, 2]).eval()
    x = torch.rand(2, 4, 16, 24, 16)  # two cases: each flip group stacks 2 x k samples
    sw = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=4, overlap=0.25, mode="gaussian")
    with torch.no_grad():
        one_by_one = FlipTTAInferer(sw)(x, net)
        for k in (2, 3, 8):
            torch.testing.assert_close(FlipTTAInferer(sw, flips_per_call=k)(x, net), one_by_one, rtol=1e-5, atol=1e-5)


def test_flip_tta_batches_the_flips_into_fewer_network_calls():
    calls = []

    def net(x):
        calls.append(x.shape[0])
        return x[:, :3]

    x = torch.rand(1, 4, 8, 8, 8)
    with torch.no_grad():
        FlipTTAInferer(SimpleInferer(), flips_per_call=4)(x, net)
    assert calls == [4, 4]
