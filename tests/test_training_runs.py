"""Any training run, of any length, leaves a usable model (issue 13).

The validation schedule of ``scripts.handlers.EpochValidationHandler`` on a real ignite engine, then a real
``python -m monai.bundle run training --epochs 1`` with the configs' default ``val_interval`` (5), which does
not divide 1, in one process and in two (``torchrun`` with ``configs/multi_gpu_train.json``, gloo on a CPU):
it must validate after its only epoch, write ``model.pt`` and exit 0. ``tests/stress_training.py`` repeats
these runs N times.
"""

import os
import subprocess

import pytest
import torch
from ignite.engine import Engine

from scripts.handlers import EpochValidationHandler
from scripts.synthetic.phantom import write_dataset
from tests._bundle import ROOT, command


class _Validator:
    def __init__(self):
        self.epochs = []

    def run(self, epoch):
        self.epochs.append(epoch)


@pytest.mark.parametrize(
    "epochs, interval, expected", [(7, 3, [3, 6, 7]), (6, 3, [3, 6]), (1, 5, [1]), (4, 1, [1, 2, 3, 4])]
)
def test_validation_every_interval_and_after_the_last_epoch(epochs, interval, expected):
    validator = _Validator()
    trainer = Engine(lambda engine, batch: None)
    handler = EpochValidationHandler(None, interval)
    handler.validator = validator  # a stand-in that records the epochs (MONAI type-checks the argument)
    handler.attach(trainer)
    trainer.run([0, 1], max_epochs=epochs)
    assert validator.epochs == expected


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    data = tmp_path_factory.mktemp("training") / "data"
    write_dataset(data, num_cases=6, seed=3, shape=(48, 56, 40), progress=False)
    return data


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["single", "multi"])
def test_one_epoch_training_leaves_a_model(mode, dataset, tmp_path):
    """``--epochs 1`` with the default ``val_interval`` 5, one process, and two processes with the multi-GPU
    overlay on a CPU (gloo): exit 0, no teardown abort, a validated ``model.pt``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        command(mode, tmp_path, dataset), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "terminate called" not in log and "Traceback" not in log, log[-4000:]
    assert "Saved best model" in log, log[-4000:]
    assert log.count("Trained weights: ") == 1, log[-4000:]  # rank 0 only
    models = tmp_path / "runs" / "train"
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint_epoch=1.pt", "model.pt"]
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
