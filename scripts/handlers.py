"""Ignite handlers the bundle declares in its configs on top of MONAI's own."""

from __future__ import annotations

import glob
import os
import re

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar


class LossProgressBar(ProgressBar):
    """tqdm progress bar over the iterations of an epoch, showing the running loss.

    MONAI engines call ``handler.attach(engine)`` with no other argument, so the loss display is set here.
    """

    def attach(self, engine: Engine, metric_names=None, output_transform=None, **kwargs) -> None:  # noqa: D102
        super().attach(
            engine,
            metric_names=metric_names,
            output_transform=output_transform or _loss_of_first_sample,
            event_name=kwargs.pop("event_name", Events.ITERATION_COMPLETED),
            **kwargs,
        )


def _loss_of_first_sample(output) -> dict:
    first = output[0] if isinstance(output, (list, tuple)) else output
    return {"loss": float(first["loss"])}


def latest_checkpoint(ckpt_dir: str, prefix: str = "checkpoint") -> str | None:
    """Path of the newest ``<prefix>_epoch=N.pt`` full checkpoint in ``ckpt_dir`` (highest N), or None."""
    found = []
    for path in glob.glob(os.path.join(ckpt_dir, f"{prefix}_epoch=*.pt")):
        m = re.search(r"_epoch=(\d+)\.pt$", path)
        if m:
            found.append((int(m.group(1)), path))
    return max(found)[1] if found else None


class TrainingCheckpoint:
    """Full training state for resuming: saved after every epoch, optionally restored before training.

    ``save_dict`` maps names to objects with ``state_dict``/``load_state_dict`` (network, optimiser,
    scheduler, the trainer itself for epoch and iteration). It holds the trainer, so this is attached from
    the config's ``run`` list rather than passed in the trainer's own handler list (which would be a
    circular reference). With ``resume=True`` the newest ``checkpoint_epoch=N.pt`` in ``ckpt_dir`` is
    loaded when the trainer starts, and a missing checkpoint is a clear error instead of a silent restart.
    """

    def __init__(self, ckpt_dir: str, save_dict: dict, resume: bool = False, map_location=None, n_saved: int = 1):
        self.ckpt_dir, self.save_dict, self.resume = ckpt_dir, save_dict, resume
        self.map_location, self.n_saved = map_location, n_saved

    def attach(self, engine: Engine) -> None:
        from monai.handlers import CheckpointLoader, CheckpointSaver

        if self.resume:
            path = latest_checkpoint(self.ckpt_dir)
            if path is None:
                raise FileNotFoundError(f"resume requested but {self.ckpt_dir} holds no checkpoint_epoch=N.pt")
            CheckpointLoader(load_path=path, load_dict=self.save_dict, map_location=self.map_location).attach(engine)
        CheckpointSaver(
            save_dir=self.ckpt_dir, save_dict=self.save_dict, save_interval=1, n_saved=self.n_saved, epoch_level=True
        ).attach(engine)
