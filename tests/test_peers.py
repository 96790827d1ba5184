"""``benchmarks.peers.window_plan``: the number of windows it reports is the number MONAI's sliding window runs."""

import pytest
import torch
from monai.inferers import sliding_window_inference

from benchmarks.peers import window_plan


@pytest.mark.parametrize(
    "roi, shape, overlap",
    [
        ([16, 16, 16], (20, 33, 16), 0.5),  # one axis covered by the window: one step along it
        ([-1, -1, -1], (9, 10, 11), 0.25),  # -1: the whole input
        ([12, 12, 12], (8, 30, 13), 0.7),  # an axis shorter than the window is padded to it
        ([3, 3, 3], (5, 5, 5), 0.9),  # an overlap that rounds the step to 0: one voxel
    ],
)
def test_window_plan_counts_the_windows_monai_runs(roi, shape, overlap):
    calls = []

    def predictor(x):
        calls.append(tuple(x.shape[2:]))
        return x

    sliding_window_inference(torch.zeros(1, 1, *shape), roi, 1, predictor, overlap=overlap)
    plan = window_plan({"roi_size": roi, "overlap": overlap}, shape)
    assert plan["windows"] == len(calls)
    assert {tuple(plan["roi"])} == set(calls)
    assert plan["padded"] == [max(r, s) for r, s in zip(plan["roi"], shape)]
