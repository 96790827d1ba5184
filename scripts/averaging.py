"""Average the weights of the last checkpoints of a run (stochastic weight averaging over epochs, as the
shipped weights may be made): a steadier model than any one epoch when the learning curve still swings::

    python -m scripts.averaging --ckpt runs/x/checkpoint_epoch=8.pt runs/x/checkpoint_epoch=9.pt \\
        runs/x/checkpoint_epoch=10.pt --output runs/x/averaged.pt

Every floating-point tensor (weights and BatchNorm running statistics) is the mean over the checkpoints; integer
tensors (BatchNorm's batch counters) come from the last one. Each file is a plain ``state_dict`` or a training
checkpoint holding one under ``"model"``. The output is a plain ``state_dict``, written atomically.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from scripts.handlers import read_checkpoint
from scripts.io import save_torch


def _weights(path: str | Path) -> dict:
    if not Path(path).is_file():
        raise SystemExit(f"error: checkpoint {path} not found")
    state = read_checkpoint(str(path), map_location="cpu")
    return state["model"] if isinstance(state.get("model"), dict) else state


def average_checkpoints(paths: Sequence[str | Path]) -> dict:
    """The mean ``state_dict`` of the checkpoints at ``paths`` (see the module docstring)."""
    if not paths:
        raise ValueError("no checkpoint to average")
    states = [_weights(p) for p in paths]
    keys = set(states[0])
    for path, state in zip(paths[1:], states[1:]):
        if set(state) != keys:
            raise SystemExit(f"error: {path} holds other tensors than {paths[0]} (another network?)")
    out = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            out[key] = torch.stack([s[key].float() for s in states]).mean(0).to(last.dtype)
        else:
            out[key] = last.clone()
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", nargs="+", required=True, help="the checkpoints to average")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    save_torch(average_checkpoints(args.ckpt), args.output)
    print(f"averaged {len(args.ckpt)} checkpoints into {args.output}")


if __name__ == "__main__":
    main()
