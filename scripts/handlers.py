"""Ignite handlers the bundle declares in its configs on top of MONAI's own.

Checkpoints are written atomically (temporary name + rename, :func:`scripts.io.save_torch`), so a killed
job leaves either the previous or the new complete file, never a truncated one, and everything in them
loads with ``torch.load(..., weights_only=True)`` (tensors, dicts, lists, numbers).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import random
import re
import time
import warnings

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar, Timer
from monai.engines.utils import default_prepare_batch
from monai.handlers import ValidationHandler

from scripts.io import file_md5, remove_stale_temporaries, save_torch
from scripts.networks import plain


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


def plain_batch(batchdata, device=None, non_blocking: bool = False, **kwargs):
    """MONAI's ``default_prepare_batch`` (the trainer's ``prepare_batch``) with the image and label as plain
    tensors (:func:`scripts.networks.plain`): a training step then copies no activation in its backward pass."""
    image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
    return plain(image), None if label is None else plain(label)


class DataLoadTimer:
    """Shows whether data loading holds training back: per epoch, the time the engine waited for batches
    (``GET_BATCH_STARTED`` -> ``GET_BATCH_COMPLETED``, an ignite ``Timer``) against the rest of the epoch is
    logged; ``fraction`` keeps the last epoch's waiting fraction (0-1). It is not put in
    ``engine.state.metrics``, so metric logs stay free of timing noise and comparable between runs.
    """

    def __init__(self) -> None:
        self.wait = self.work = self.fraction = 0.0
        self._waiting, self._epoch = Timer(), Timer()

    def attach(self, engine: Engine) -> None:
        self._waiting.attach(
            engine, start=Events.EPOCH_STARTED, resume=Events.GET_BATCH_STARTED, pause=Events.GET_BATCH_COMPLETED
        )
        self._epoch.attach(engine, start=Events.EPOCH_STARTED)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._report)

    def _report(self, engine: Engine) -> None:
        self.wait = self._waiting.value()
        self.work = max(self._epoch.value() - self.wait, 0.0)
        total = self.wait + self.work
        self.fraction = self.wait / total if total > 0 else 0.0
        engine.logger.info(
            f"Epoch[{engine.state.epoch}] data loading: waited {self.wait:.1f} s for batches, "
            f"{self.work:.1f} s on them ({100 * self.fraction:.0f}% waiting)"
        )


class EpochValidationHandler(ValidationHandler):
    """MONAI's epoch-level ``ValidationHandler`` that also validates after the last epoch when ``interval`` does
    not divide ``max_epochs`` (``--epochs 1`` with ``--val_interval 5``): every training run, of any length,
    ends with a validated model, so the best-model saver writes ``model.pt``."""

    def __init__(self, validator=None, interval: int = 1, exec_at_start: bool = False) -> None:
        super().__init__(interval, validator, epoch_level=True, exec_at_start=exec_at_start)

    def attach(self, engine: Engine) -> None:
        interval = self.interval

        def due(engine: Engine, epoch: int) -> bool:
            return epoch % interval == 0 or epoch == engine.state.max_epochs

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=due), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)


def _is_main_process() -> bool:
    """Rank 0 of a distributed run, or the only process: the one that writes files."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def _unwrap(obj):
    """The module inside ``DataParallel`` / ``DistributedDataParallel`` (plain state_dict keys)."""
    return obj.module if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)) else obj


def _epoch_checkpoints(ckpt_dir: str, prefix: str = "checkpoint") -> list[tuple[int, str]]:
    found = []
    for path in glob.glob(os.path.join(glob.escape(ckpt_dir), f"{prefix}_epoch=*.pt")):
        m = re.search(r"_epoch=(\d+)\.pt$", path)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str, prefix: str = "checkpoint") -> str | None:
    """Path of the newest ``<prefix>_epoch=N.pt`` full checkpoint in ``ckpt_dir`` (highest N), or None."""
    found = _epoch_checkpoints(ckpt_dir, prefix)
    return found[-1][1] if found else None


class CheckpointError(ValueError):
    """A weights file that cannot give a network its weights: missing, unreadable, not a dict of weights, or
    another network's weights. The message is one line naming the file (``checkpoint <path>...``)."""


@contextlib.contextmanager
def checkpoint_errors(exit_on_error: bool = True):
    """With ``exit_on_error`` (the configs and command lines), a :class:`CheckpointError` raised in the block
    becomes ``SystemExit("error: <its message>")``: ``python -m monai.bundle run`` prints that one line and exits
    with code 1 instead of a traceback. Without it the error is raised (a server, e.g. the MONAI Label app)."""
    try:
        yield
    except CheckpointError as e:
        if exit_on_error:
            raise SystemExit(f"error: {e}") from None
        raise


def read_checkpoint(path: str, map_location=None, exit_on_error: bool = True) -> dict:
    """The dict saved in the checkpoint ``path`` (``torch.load`` with ``weights_only=True``).

    Raises:
        CheckpointError: (``SystemExit("error: ...")`` with ``exit_on_error``, :func:`checkpoint_errors`) the
            file cannot be read (truncated, empty, not a PyTorch file, or holding objects other than tensors
            and plain values) or holds no dict; one line naming the file.
    """
    with checkpoint_errors(exit_on_error):
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... depending on the damage
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(
                f"checkpoint {path}: cannot be read as PyTorch weights (truncated, empty or not a weights file: "
                f"{reason[:200]})"
            ) from None
        if not isinstance(state, dict):
            raise CheckpointError(f"checkpoint {path}: holds a {type(state).__name__}, not a dict of weights")
        return state


def read_weights(path, map_location=None, missing: str = "train first, or pass --ckpt_path") -> dict:
    """The weights (a state dict) in ``path``: the file's dict itself, or its ``"model"`` entry when it is a full
    training checkpoint.

    Raises:
        CheckpointError: one line naming the file: it does not exist (``missing`` says what to do instead), or it
            cannot be read (:func:`read_checkpoint`).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} not found ({missing})")
    state = read_checkpoint(str(path), map_location=map_location, exit_on_error=False)
    return state["model"] if isinstance(state.get("model"), dict) else state


# --- random states as weights_only-loadable values --------------------------------------------------------


def _numpy_state(state) -> dict:
    """``np.random.RandomState.get_state()`` (legacy tuple) as tensors and numbers."""
    name, keys, pos, has_gauss, cached_gaussian = state
    if name != "MT19937":
        raise ValueError(f"unsupported numpy bit generator {name}")
    return {
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _numpy_state_tuple(d: dict) -> tuple:
    keys = d["keys"].cpu().numpy().astype(np.uint32)
    return ("MT19937", keys, int(d["pos"]), int(d["has_gauss"]), float(d["cached_gaussian"]))


def find_random_states(root) -> list[np.random.RandomState]:
    """The ``np.random.RandomState`` of every MONAI ``Randomizable`` reachable from ``root`` (a dataset, a
    ``Compose`` or a list of transforms), in a fixed order and each once.

    MONAI's random transforms draw from their own ``R``, not from the global generators: with
    ``num_workers=0`` the ``DataLoader`` seeds them once and they run on in the main process across epochs,
    so resuming reproducibly needs their states too. (With workers they are re-seeded every epoch from the
    torch generator of the main process, which the checkpoint also holds.) The search descends into
    ``root``, lists, tuples, dicts and MONAI transforms only, so it stays small (tensors and arrays are
    skipped).
    """
    from monai.transforms import Randomizable, Transform

    found: list[np.random.RandomState] = []
    seen: set[int] = set()

    def visit(obj, descend: bool) -> None:
        if id(obj) in seen or isinstance(obj, (torch.Tensor, np.ndarray, str, bytes, int, float, type(None))):
            return
        seen.add(id(obj))
        if isinstance(obj, np.random.RandomState):
            found.append(obj)
            return
        if isinstance(obj, Randomizable):
            visit(obj.R, False)  # may be the class-level default when set_random_state was never called
        if isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item, isinstance(item, (list, tuple, dict)))
        elif isinstance(obj, dict):
            for item in obj.values():
                visit(item, isinstance(item, (list, tuple, dict)))
        elif (descend or isinstance(obj, (Transform, Randomizable))) and hasattr(obj, "__dict__"):
            for item in vars(obj).values():
                visit(item, isinstance(item, (list, tuple, dict)))

    visit(root, True)
    return found


def get_random_state(randomizable=None) -> dict:
    """Python ``random``, numpy, torch CPU (and current CUDA device) generator states, plus the states of
    the MONAI random transforms found from ``randomizable`` (see :func:`find_random_states`)."""
    version, internal, gauss_next = random.getstate()
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": _numpy_state(np.random.get_state(legacy=True)),
        "torch": torch.get_rng_state(),
        "transforms": [_numpy_state(r.get_state(legacy=True)) for r in find_random_states(randomizable)]
        if randomizable is not None
        else [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_random_state(state: dict, randomizable=None) -> None:
    """Restore what :func:`get_random_state` returned (tensors may come back on any device)."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    np.random.set_state(_numpy_state_tuple(state["numpy"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
    if randomizable is not None:
        targets, saved = find_random_states(randomizable), state.get("transforms", [])
        if len(targets) != len(saved):
            warnings.warn(
                f"checkpoint holds {len(saved)} random transform states but the pipeline has {len(targets)}; "
                "their random states are not restored (the transforms changed since it was saved)",
                stacklevel=2,
            )
            return
        for r, s in zip(targets, saved):
            r.set_state(_numpy_state_tuple(s))


# --- checkpoint handlers ------------------------------------------------------------------------------------


class TrainingCheckpoint:
    """Full training state for resuming: saved atomically after every epoch, optionally restored before
    training.

    ``save_dict`` maps names to objects with ``state_dict``/``load_state_dict`` (network, optimiser,
    scheduler, the trainer itself for epoch and iteration). The checkpoint also holds ``best_metrics``: the
    best key metric and its epoch of the trainer and of ``validator`` (so after a resume the best-model saver
    does not replace ``model.pt`` with a model worse than the best before the interruption), ``rng``:
    the random states (:func:`get_random_state`, with the random transforms found from ``randomizable``,
    e.g. the training dataset) and, with AMP, the trainer's grad ``scaler``. It is saved at the end of every
    epoch, after validation and the scheduler step, and only the newest ``n_saved`` ``checkpoint_epoch=N.pt``
    are kept (older ones, also those of an earlier run, are deleted after a successful save; a resumed run counts
    the checkpoints it resumes among them).

    It holds the trainer, so it is attached from the config's ``run`` list rather than passed in the
    trainer's own handler list (which would be a circular reference), and so its epoch-end handler runs
    after all of the trainer's. With ``resume=True`` the newest ``checkpoint_epoch=N.pt`` in ``ckpt_dir`` is
    read when the handler is attached (:func:`read_checkpoint`: a damaged file is one error line naming it) and
    restored when the trainer starts; a missing checkpoint is one error line instead of a silent restart. Only
    rank 0 writes files; every rank loads.
    """

    def __init__(
        self,
        ckpt_dir: str,
        save_dict: dict,
        resume: bool = False,
        map_location=None,
        n_saved: int = 1,
        validator=None,
        randomizable=None,
        prefix: str = "checkpoint",
    ):
        if n_saved < 1:
            raise ValueError("n_saved must be at least 1")
        self.ckpt_dir, self.save_dict, self.resume = ckpt_dir, save_dict, resume
        self.map_location, self.n_saved = map_location, n_saved
        self.validator, self.randomizable, self.prefix = validator, randomizable, prefix
        self.load_path: str | None = None
        self.checkpoint: dict | None = None
        self._saved: list[str] = []
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        self.logger = engine.logger
        if _is_main_process():
            remove_stale_temporaries(self.ckpt_dir, f".{self.prefix}_epoch=*.pt.*.tmp*")
        if self.resume:
            self.load_path = latest_checkpoint(self.ckpt_dir, self.prefix)
            if self.load_path is None:
                raise SystemExit(f"error: --resume: {self.ckpt_dir} holds no {self.prefix}_epoch=N.pt to resume from")
            # the checkpoints resumed from are this run's own: they count towards n_saved
            self._saved = [path for _, path in _epoch_checkpoints(self.ckpt_dir, self.prefix)]
            self.checkpoint = read_checkpoint(self.load_path, self.map_location)  # a damaged file stops here
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def state_dict(self, engine: Engine) -> dict:
        state = {name: _unwrap(obj).state_dict() for name, obj in self.save_dict.items()}
        state["best_metrics"] = {
            role: {"best_metric": float(e.state.best_metric), "best_metric_epoch": int(e.state.best_metric_epoch)}
            for role, e in self._workflows(engine).items()
        }
        state["rng"] = get_random_state(self.randomizable)
        if getattr(engine, "scaler", None) is not None:
            state["scaler"] = engine.scaler.state_dict()
        return state

    def _workflows(self, engine: Engine) -> dict:
        """The MONAI workflows whose key-metric bookkeeping (best value and epoch) is checkpointed."""
        found = {"trainer": engine, "validator": self.validator}
        return {k: e for k, e in found.items() if e is not None and hasattr(e.state, "best_metric_epoch")}

    def save(self, engine: Engine) -> None:
        if not _is_main_process():
            return
        os.makedirs(self.ckpt_dir, exist_ok=True)
        path = os.path.join(self.ckpt_dir, f"{self.prefix}_epoch={engine.state.epoch}.pt")
        save_torch(self.state_dict(engine), path)
        self._saved = [p for p in self._saved if p != path] + [path]
        keep = set(self._saved[-self.n_saved :])
        for _, old in _epoch_checkpoints(self.ckpt_dir, self.prefix):
            if old not in keep:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(old)
        self._saved = [p for p in self._saved if p in keep]

    def load(self, engine: Engine) -> None:
        from ignite.handlers import Checkpoint

        checkpoint = self.checkpoint
        prior_max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=self.save_dict, checkpoint=checkpoint)
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise ValueError(
                f"checkpoint {self.load_path} is at epoch {engine.state.epoch}, past max_epochs {prior_max_epochs}"
            )
        engine.state.max_epochs = prior_max_epochs
        best = ""
        for role, e in self._workflows(engine).items():
            saved = checkpoint.get("best_metrics", {}).get(role)
            if saved is not None:
                e.state.best_metric = float(saved["best_metric"])
                e.state.best_metric_epoch = int(saved["best_metric_epoch"])
                best += f", best {e.state.key_metric_name}={e.state.best_metric!r} at epoch {e.state.best_metric_epoch}"
        if "scaler" in checkpoint and getattr(engine, "scaler", None) is not None:
            engine.scaler.load_state_dict(checkpoint["scaler"])
        if "rng" in checkpoint:
            set_random_state(checkpoint["rng"], self.randomizable)
        self.logger.info(f"Restored all variables from {self.load_path} (epoch {engine.state.epoch}{best})")


class BestModelSaver:
    """Saves the network's plain ``state_dict`` to ``save_path`` (``models/model.pt``) atomically each time
    the evaluator's key metric improves: MONAI's ``CheckpointSaver(save_key_metric=True)`` without the
    non-atomic write.

    It relies on the evaluator's own bookkeeping (``state.best_metric`` / ``best_metric_epoch``, updated
    before handlers run, greater-is-better by default), which :class:`TrainingCheckpoint` saves and restores,
    so after a resume a model worse than the best before the kill does not replace ``model.pt``.
    """

    def __init__(self, network, save_path: str):
        self.network, self.save_path = network, save_path
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        self.logger = engine.logger
        if _is_main_process():
            folder, name = os.path.split(os.path.abspath(self.save_path))
            remove_stale_temporaries(folder, f".{glob.escape(name)}.*.tmp*")
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.best_metric_epoch != engine.state.epoch or not _is_main_process():
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.save_path)), exist_ok=True)
        save_torch(_unwrap(self.network).state_dict(), self.save_path)
        self.logger.info(
            f"Saved best model ({engine.state.key_metric_name}={engine.state.best_metric:.4f}, epoch "
            f"{engine.state.epoch}) to {self.save_path}"
        )


def shipped_weights(bundle_root: str) -> dict[str, str]:
    """``{absolute path: md5}`` of the weight files listed in the bundle's ``large_files.yml``."""
    import yaml

    listing = os.path.join(bundle_root, "large_files.yml")
    if not os.path.isfile(listing):
        return {}
    with open(listing) as f:
        entries = (yaml.safe_load(f) or {}).get("large_files") or []
    return {os.path.abspath(os.path.join(bundle_root, e["path"])): str(e["hash_val"]) for e in entries}


def guard_shipped_weights(ckpt_path: str, bundle_root: str, overwrite: bool = False) -> None:
    """Stop a training run before it starts when it would overwrite the shipped weights.

    A run writes its best model to ``ckpt_path``; when that file is a shipped weight file (listed in
    ``large_files.yml``) and still holds the shipped weights (same md5), training must say where else to write
    (``--ckpt_dir runs/<name>``) or replace them on purpose (``--overwrite_shipped true``).
    """
    path = os.path.abspath(ckpt_path)
    expected = shipped_weights(bundle_root).get(path)
    if overwrite or expected is None or not os.path.isfile(path) or file_md5(path) != expected:
        return
    raise SystemExit(
        f"error: {ckpt_path} holds the shipped weights (md5 listed in large_files.yml); training would overwrite "
        "them. Train into a run folder with --ckpt_dir runs/<name> (the default is runs/train; then use it with "
        "--ckpt_path runs/<name>/model.pt), or pass --overwrite_shipped true to replace them on purpose."
    )


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies inside it, absolute otherwise, shell-quoted."""
    import shlex

    path, here = os.path.abspath(path), os.getcwd()
    return shlex.quote(os.path.relpath(path, here) if path.startswith(here + os.sep) else path)


def inference_command(ckpt_path: str, bundle_root: str) -> str:
    """The command line that segments a folder of cases with the weights at ``ckpt_path`` (the bundle's
    ``configs/inference.json``; ``--bundle_root`` only when the bundle is not the working directory)."""
    root = os.path.abspath(bundle_root)
    configs = os.path.join(root, "configs")
    parts = ["python -m monai.bundle run --meta_file", _shown(os.path.join(configs, "metadata.json"))]
    parts += ["--config_file", _shown(os.path.join(configs, "inference.json"))]
    parts += [] if root == os.getcwd() else ["--bundle_root", _shown(root)]
    parts += ["--ckpt_path", _shown(ckpt_path), "--dataset_dir <cases> --output_dir <output folder>"]
    return " ".join(parts)


def report_trained_weights(ckpt_path: str, bundle_root: str) -> str | None:
    """The last step of a training run: print where the trained weights are and the command that uses them
    (:func:`inference_command`); in a multi-process run only rank 0 prints.

    Raises:
        SystemExit: ``error: ...`` when the run ended without writing ``ckpt_path``.

    Returns:
        The printed text (None on the other ranks).
    """
    if not _is_main_process():
        return None
    if not os.path.isfile(ckpt_path):
        raise SystemExit(f"error: {ckpt_path}: training ended without writing the trained weights")
    text = f"Trained weights: {_shown(ckpt_path)}\nSegment with them: {inference_command(ckpt_path, bundle_root)}"
    print(text, flush=True)
    return text


class MissingModalitiesLog:
    """Evaluator handler of ``--allow_missing_modalities true``: one line per case segmented without some of its
    sequences, naming them; at the end of the run one summary line and ``<output_dir>/missing_sequences.json``
    (``{case id: [missing sequences]}``, every case segmented in the run, ``[]`` for complete ones).

    It reads the ``missing_modalities`` entry that ``scripts.transforms.LoadImageSharedGridd`` puts in each item.
    """

    def __init__(self, output_dir: str, enabled: bool = True, filename: str = "missing_sequences.json"):
        self.output_dir, self.enabled, self.filename = output_dir, bool(enabled), filename
        self.cases: dict[str, list[str]] = {}
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, lambda _: self.cases.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def iteration_completed(self, engine: Engine) -> None:
        from scripts.conventions import MODALITIES, MODALITY_NAMES
        from scripts.transforms import missing_of

        for item in engine.state.batch:  # decollated by the evaluator's post-processing: one dict per case
            case_id = item_case_id(item, f"case {len(self.cases) + 1}")
            missing = missing_of(item)
            self.cases[case_id] = missing
            if missing:
                names = ", ".join(MODALITY_NAMES[MODALITIES.index(m)] for m in missing)
                used = " + ".join(n for m, n in zip(MODALITIES, MODALITY_NAMES) if m not in missing)
                self.logger.warning(f"case {case_id}: {names} missing: imputed from {used}")

    def completed(self, engine: Engine) -> None:
        from scripts.io import write_json

        partial = sum(1 for m in self.cases.values() if m)
        path = write_json(self.cases, os.path.join(self.output_dir, self.filename))
        self.logger.info(f"{partial} of {len(self.cases)} case(s) segmented without some sequences (per case: {path})")


def item_case_id(item: dict, default: str) -> str:
    """The case id of a preprocessed item: its ``case_id``, else that of its first image file (the name its
    prediction gets: a datalist JSON's entries often have no ``case_id``), else ``default``."""
    from scripts.conventions import case_id_from_path

    if item.get("case_id"):
        return str(item["case_id"])
    sources = getattr(item.get("image"), "meta", {}).get("filename_or_obj")
    first = np.atleast_1d(sources)[0] if sources is not None and len(np.atleast_1d(sources)) else None
    return case_id_from_path(str(first)) if first else default


def format_seconds(seconds: float) -> str:
    """``4.1 s``, ``2 min 05 s`` or ``1 h 02 min``: a duration as a progress line writes it."""
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class CaseProgress:
    """One progress line per case of a batch: ``[3/20] case_id: 4.1 s -> path (ETA 1 min 10 s)``.

    ``total``: the number of cases (``None`` when unknown: ``[3]`` and no ETA). The time of a case is the time
    since the previous case ended (or :meth:`start`), so waiting for its data counts; the ETA is the mean time
    per case so far times the cases left. ``detail`` (``"network 2.0 s, ..."``) goes in brackets after the time.
    """

    def __init__(self, total: int | None = None, logger: logging.Logger | None = None) -> None:
        self.total = total
        self.logger = logger or logging.getLogger(__name__)
        self.done = 0
        self.start()

    def start(self) -> None:
        """Restart the clock and the count (a new pass over the cases)."""
        self.done, self.started = 0, time.perf_counter()
        self.last = self.started

    def line(self, case_id: str, seconds: float, output: str | None, detail: str = "") -> str:
        """The progress line of the case just counted."""
        count = f"[{self.done}/{self.total}]" if self.total else f"[{self.done}]"
        text = f"{count} {case_id}: {format_seconds(seconds)}"
        text += f" ({detail})" if detail else ""
        text += f" -> {output}" if output else ""
        left = (self.total or 0) - self.done
        if left > 0:
            text += f" (ETA {format_seconds((self.last - self.started) / self.done * left)})"
        return text

    def case_done(self, case_id: str, output: str | None = None, detail: str = "") -> str:
        """Count a finished case and log (INFO) and return its line."""
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        self.done += 1
        text = self.line(case_id, seconds, output, detail)
        self.logger.info(text)
        return text


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


class CaseProgressLog:
    """Evaluator handler: a :class:`CaseProgress` line per segmented case, with the time the case waited for its
    data (loading and preprocessing not hidden behind the previous case), the network's time (the inferer, TTA
    included) and the post-processing's (writing included), and the final path of the prediction
    (``SaveImaged(savepath_in_metadict=True)``; ``not written`` when the writer failed, see
    ``scripts.io.AtomicNibabelWriter``).

    ``total``: the number of cases (``len(@dataset)``).
    """

    def __init__(self, total: int | None = None) -> None:
        self.progress = CaseProgress(total)
        self.times: dict[str, float] = {}
        self._marks: dict[str, float] = {}

    def attach(self, engine: Engine) -> None:
        from monai.engines.utils import IterationEvents

        self.progress.logger = engine.logger
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.progress.start())
        for event, name in (
            (Events.GET_BATCH_STARTED, "get"),
            (Events.GET_BATCH_COMPLETED, "got"),
            (IterationEvents.FORWARD_COMPLETED, "forward"),
        ):
            engine.add_event_handler(event, self._mark, name)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)

    def _mark(self, engine: Engine, name: str) -> None:
        self._marks[name] = time.perf_counter()

    def _detail(self) -> str:
        m, now = self._marks, time.perf_counter()
        self.times = {
            "data_wait_s": m.get("got", now) - m.get("get", now),
            "network_s": m.get("forward", now) - m.get("got", now),
            "postprocessing_s": now - m.get("forward", now),
        }
        return (
            f"data {self.times['data_wait_s']:.1f} s, network {self.times['network_s']:.1f} s, "
            f"post-processing {self.times['postprocessing_s']:.1f} s"
        )

    def iteration_completed(self, engine: Engine) -> None:
        from scripts.io import WRITTEN

        items = _as_list(engine.state.batch)  # decollated by the post-processing: one dict per case
        outputs = _as_list(engine.state.output)  # the post-processed "pred" lives here
        detail = self._detail()
        for item, output in zip(items, outputs + [None] * (len(items) - len(outputs))):
            pred = output.get("pred") if isinstance(output, dict) else None
            saved = getattr(pred, "meta", {}).get("saved_to") if pred is not None else None
            path = None if saved is None else saved if os.path.realpath(saved) in WRITTEN else "not written"
            case_id = str(item.get("case_id", "case")) if isinstance(item, dict) else "case"
            self.progress.case_done(case_id, path, detail)
