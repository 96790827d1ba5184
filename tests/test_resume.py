"""Nothing lost on a killed job: training killed with SIGKILL mid-epoch resumes exactly where it stopped.

The bundle trains in real subprocesses (``python -m monai.bundle``) with the tiny settings of
``test_bundle_e2e.py``. One run is killed during epoch 3 and started again with ``--resume true``; an
uninterrupted reference run with the same settings trains beside it. The resumed run must continue from
``checkpoint_epoch=2.pt`` with the pre-kill best Dice, and because the checkpoint holds every random
state (python, numpy, torch and the random transforms' own generators), its epochs 3-5 must be identical
to the reference run's: the same logged metrics and learning rates and bit-identical weights, optimiser
state and best model. ``num_workers`` is 0 (as in all tiny runs) so the random transforms run in the main
process; both runs use one intra-op thread so that CPU kernels reduce in the same order.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch

from scripts.handlers import get_random_state, remove_stale_temporaries, set_random_state
from scripts.synthetic.phantom import write_dataset
from tests._bundle import ROOT, TINY

EPOCHS = 5
# what the runs log each epoch: train/validation metrics, best values, learning rate, best-model saves
PROGRESS = re.compile(
    r"(Epoch\[\d+\] Metrics -- .*|Key metric: .*|Got new best metric .*|Current learning rate: .*|Saved best model \(.*?\))"
)


def _launch(bundle_root: Path, data: Path, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--meta_file", str(ROOT / "configs" / "metadata.json"),
        "--config_file", str(ROOT / "configs" / "train.json"),
        "--bundle_root", str(bundle_root), "--dataset_dir", str(data), *TINY,
        "--epochs", str(EPOCHS), "--val_interval", "1", *extra,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


def _read(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 150) -> str:
    proc.wait(timeout=timeout)
    text = _read(log)
    assert proc.returncode == 0, f"{' '.join(proc.args)}\n{text[-4000:]}"
    return text


def _progress(text: str, after: str) -> list[str]:
    """Progress lines after the last ``after`` (the validator logs ``Epoch[N] Complete`` before the trainer)."""
    return PROGRESS.findall(text.rsplit(after, 1)[1])


def _assert_identical(a, b, where="checkpoint"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.slow
def test_training_killed_mid_epoch_resumes_exactly(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, num_cases=6, seed=3, shape=(48, 56, 40), progress=False)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    logs = {name: tmp_path / f"{name}.log" for name in ("reference", "killed", "resumed")}
    models = killed / "runs" / "train"
    procs = []
    try:
        procs.append(ref_proc := _launch(reference, data, logs["reference"]))
        procs.append(victim := _launch(killed, data, logs["killed"]))

        # kill it once epoch 2 is checkpointed and epoch 3 is iterating (its progress bar is showing)
        deadline = time.monotonic() + 120
        while not ((models / "checkpoint_epoch=2.pt").exists() and "Epoch [3/" in _read(logs["killed"])):
            assert victim.poll() is None, f"training ended before it was killed:\n{_read(logs['killed'])[-4000:]}"
            assert time.monotonic() < deadline, f"epoch 3 never started:\n{_read(logs['killed'])[-4000:]}"
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
        assert "Epoch[3] Complete" not in _read(logs["killed"]), "killed too late: epoch 3 had finished"

        # nothing half-written: no temporaries, and every file loads with weights_only=True
        assert sorted(p.name for p in models.iterdir()) == ["checkpoint_epoch=2.pt", "model.pt"]
        for path in models.iterdir():
            torch.load(path, map_location="cpu", weights_only=True)
        ckpt = torch.load(models / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
        assert ckpt["trainer"]["iteration"] == 2 * ckpt["trainer"]["epoch_length"]
        best_before = ckpt["best_metrics"]["validator"]
        assert best_before["best_metric_epoch"] in (1, 2) and 0.0 <= best_before["best_metric"] <= 1.0

        procs.append(resumed := _launch(killed, data, logs["resumed"], "--resume", "true"))
        log = _finish(resumed, logs["resumed"])
        ref_log = _finish(ref_proc, logs["reference"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    # resumed from epoch 2 with the pre-kill best Dice, not from scratch, and trained to the end
    assert f"Restored all variables from {models / 'checkpoint_epoch=2.pt'} (epoch 2," in log
    assert f"best val_mean_dice={best_before['best_metric']!r} at epoch {best_before['best_metric_epoch']}" in log
    assert "Epoch[1] Complete" not in log and "Epoch[2] Complete" not in log
    assert all(f"Epoch[{e}] Complete" in log for e in range(3, EPOCHS + 1))
    assert sorted(p.name for p in models.iterdir()) == [f"checkpoint_epoch={EPOCHS}.pt", "model.pt"]
    final = torch.load(models / f"checkpoint_epoch={EPOCHS}.pt", map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == EPOCHS * final["trainer"]["epoch_length"]

    # identical to the uninterrupted run from epoch 3 on: logged metrics, learning rates and best values ...
    after_kill = _progress(log, "Restored all variables")
    assert len(after_kill) >= 4 * (EPOCHS - 2), after_kill
    assert after_kill == _progress(ref_log, "Epoch[2] Complete")
    # ... and bit for bit: weights, optimiser, scheduler, best metrics, random states, best model
    ref_final = torch.load(
        reference / "runs" / "train" / f"checkpoint_epoch={EPOCHS}.pt", map_location="cpu", weights_only=True
    )
    _assert_identical(final, ref_final)
    _assert_identical(
        torch.load(models / "model.pt", weights_only=True),
        torch.load(reference / "runs" / "train" / "model.pt", weights_only=True),
    )


def test_random_states_round_trip_through_weights_only_checkpoint():
    from monai.transforms import Compose, RandFlipd, RandRotated, RandSpatialCropd

    pipeline = Compose(
        [RandSpatialCropd("x", (4, 4), random_size=False), RandFlipd("x", prob=0.5), RandRotated("x", 0.3, prob=0.5)]
    ).set_random_state(seed=7)

    def draws():
        transforms = [t.R.randint(1 << 30) for t in pipeline.transforms] + [pipeline.transforms[2].rand_rotate.R.rand()]
        return random.random(), float(np.random.rand()), torch.rand(3).tolist(), transforms

    buffer = BytesIO()
    torch.save(get_random_state(pipeline), buffer)
    expected = draws()
    draws()  # move every generator on
    buffer.seek(0)
    set_random_state(torch.load(buffer, weights_only=True), pipeline)
    assert draws() == expected


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / ".checkpoint_epoch=3.pt.999999999.tmp-resunet.pt"  # pid beyond pid_max: not running
    alive = tmp_path / f".checkpoint_epoch=4.pt.{os.getppid()}.tmp-resunet.pt"
    keep = tmp_path / "checkpoint_epoch=2.pt"
    for p in (dead, alive, keep):
        p.write_bytes(b"x")
    assert remove_stale_temporaries(str(tmp_path), ".checkpoint_epoch=*.pt.*.tmp*") == [str(dead)]
    assert alive.exists() and keep.exists()


def test_resumed_run_keeps_its_earlier_checkpoints_up_to_n_saved(tmp_path):
    from ignite.engine import Engine

    from scripts.handlers import TrainingCheckpoint

    for epoch in (1, 2, 3):
        torch.save({"model": torch.nn.Linear(1, 1).state_dict()}, tmp_path / f"checkpoint_epoch={epoch}.pt")
    handler = TrainingCheckpoint(str(tmp_path), {"model": torch.nn.Linear(1, 1)}, resume=True, n_saved=3)
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.state.epoch = 4
    handler.save(engine)
    assert sorted(p.name for p in tmp_path.glob("checkpoint_epoch=*.pt")) == [
        "checkpoint_epoch=2.pt",
        "checkpoint_epoch=3.pt",
        "checkpoint_epoch=4.pt",
    ]


def test_best_model_is_not_replaced_by_a_worse_one_after_resume(tmp_path):
    """The validator's best Dice travels in the full checkpoint, so after a restart a validation worse than
    the best before it leaves ``model.pt`` alone (a fresh validator would take any first result as best)."""
    from ignite.engine import Engine
    from ignite.metrics import Metric
    from monai.engines import SupervisedEvaluator

    from scripts.handlers import BestModelSaver, TrainingCheckpoint

    class Scripted(Metric):  # key metric giving the next scripted value at each validation
        def __init__(self, *values):
            self.values = iter(values)
            super().__init__()

        def reset(self):
            pass

        def update(self, output):
            pass

        def compute(self):
            return next(self.values)

    def session(weight, *dice, resume=False):
        net = torch.nn.Conv2d(1, 1, 1)
        batch = [{"image": torch.zeros(1, 1, 4, 4), "label": torch.zeros(1, 1, 4, 4)}]
        validator = SupervisedEvaluator(
            device="cpu", val_data_loader=batch, network=net, key_val_metric={"val_mean_dice": Scripted(*dice)},
            val_handlers=[BestModelSaver(net, str(tmp_path / "model.pt"))],
        )  # fmt: skip
        trainer = Engine(lambda engine, b: None)
        checkpoint = TrainingCheckpoint(str(tmp_path), {"model": net}, resume=resume, validator=validator)
        checkpoint.attach(trainer)
        if resume:
            checkpoint.load(trainer)  # what the STARTED event does
        torch.nn.init.constant_(net.weight, weight)  # this session's training
        return net, validator, trainer, checkpoint

    net, validator, trainer, checkpoint = session(1.0, 0.5)
    validator.run(1)
    trainer.state.epoch = 1
    checkpoint.save(trainer)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].eq(1.0).all()

    net, validator, trainer, _ = session(2.0, 0.3, resume=True)  # restarted: epoch 2 validates worse
    assert (validator.state.best_metric, validator.state.best_metric_epoch) == (0.5, 1)
    validator.run(2)
    assert (validator.state.best_metric, validator.state.best_metric_epoch) == (0.5, 1)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].eq(1.0).all()
