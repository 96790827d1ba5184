"""MONAI Label infer and train tasks over this bundle's configs.

MONAI Label's stock ``BundleInferTask``/``BundleTrainTask`` read one config file each (``inference.json``,
``train.json``); the automatic model's configs stand alone. The interactive model is an overlay merged
over them (``deepedit_inference.json``, ``deepedit_train.json``), as ``python -m monai.bundle run --config_file
"[...]"`` does, so the tasks below are the stock ones with three changes: they read a list of config files, they
load weights from the model's own file under ``models/``, and they report the BraTS label names and values that
the label maps carry.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import glob
import logging
import os
from collections.abc import Sequence

import monai.bundle
from monai.bundle import ConfigParser
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer import bundle as infer_bundle
from monailabel.tasks.train import bundle as train_bundle
from monailabel.utils.others.generic import name_to_device, strtobool

from scripts.casework import parse_configs
from scripts.data.default_data import is_empty_dataset
from scripts.finetune import finetune_datalist
from scripts.io import write_json
from scripts.transforms import missing_of

from . import versions
from .models import BundleModel
from .retraining import (
    DEFAULT_VAL_SPLIT,
    TrainingRequestError,
    case_id,
    check_options,
    decide,
    evaluate,
    split_validation,
)

logger = logging.getLogger(__name__)


def read_configs(bundle_path: str, files: Sequence[str]) -> ConfigParser:
    """The config ``files`` of the bundle at ``bundle_path`` merged in order (later files override earlier ids),
    ``bundle_root`` set (:func:`scripts.casework.parse_configs`)."""
    return parse_configs([os.path.join(bundle_path, "configs", f) for f in files], {"bundle_root": bundle_path})


def label_names(parser: ConfigParser, with_background: bool) -> dict[str, int]:
    """Label name -> value in the label maps the bundle writes: the bundle's class names
    (``scripts.conventions.CLASS_NAMES``, read through its configs) with its ``brats_labels`` (e.g. 1, 2, 4)."""
    values = [int(v) for v in parser.get_parsed_content("brats_labels")]
    parser["class_names"] = "$list(scripts.conventions.CLASS_NAMES)"
    background, *classes = parser.get_parsed_content("class_names")
    names = dict(zip(classes, values))
    return {background: 0, **names} if with_background else names


class _InferConstants(infer_bundle.BundleConstants):
    def __init__(self, model: BundleModel):
        self.model = model

    def configs(self) -> Sequence[str]:
        return self.model.infer_configs[:1]

    def model_pytorch(self) -> str:
        return self.model.weights


class _TrainConstants(train_bundle.BundleConstants):
    def __init__(self, model: BundleModel):
        self.model = model

    def configs(self) -> Sequence[str]:
        return self.model.train_configs[:1]


class _ChannelLabelsFilter(logging.Filter):
    """Drops the stock task's ``Label: TC => 0`` lines: they name the network's region channels
    (``metadata.json``), not the values of the label map the task serves."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "; Label: " not in record.getMessage()


@contextlib.contextmanager
def _without_channel_labels_log():
    stock = logging.getLogger(infer_bundle.__name__)
    drop = _ChannelLabelsFilter()
    stock.addFilter(drop)
    try:
        yield
    finally:
        stock.removeFilter(drop)


class ResUNetInferTask(infer_bundle.BundleInferTask):
    """Inference with the merged ``model.infer_configs``; the label map (uint8, BraTS values, the study's
    geometry) comes from the bundle's own post-processing, which MONAI Label's writer saves.

    With ``--conf allow_missing_modalities true`` a study may lack sequences, given as all-zero channels (e.g.
    ``import_studies --allow_missing_modalities``): they are imputed as in the bundle's inference, and the
    response's result JSON names them (``missing_sequences``, [] for a complete study)."""

    def __init__(self, bundle_path: str, conf: dict, model: BundleModel, type: str | None = None, **kwargs):
        self.model = model
        self.allow_missing = strtobool(conf.get("allow_missing_modalities", "false"))
        # extend_load_image=False keeps the bundle's LoadImaged (it allows a missing "label" key; MONAI Label's
        # LoadImageTensord wrapper does not).
        with _without_channel_labels_log():
            super().__init__(
                bundle_path,
                conf,
                const=_InferConstants(model),
                type=type or model.type,
                extend_load_image=False,
                load_strict=True,
                **kwargs,
            )
        if not self.valid:
            return
        self.labels = label_names(self.bundle_config, with_background=self.type == InferType.DEEPEDIT)
        label_map = " / ".join(f"{name} => {value}" for name, value in self.labels.items())
        logger.info(f"Model: models/{model.weights}; Type: {self.type}; Label map: {label_map}")
        weights_dir = os.path.dirname(os.path.join(bundle_path, "models", model.weights))
        self._config["model_filename"] = [os.path.basename(model.weights)] + sorted(
            os.path.basename(p)
            for p in glob.glob(os.path.join(weights_dir, "*.pt"))
            if os.path.basename(p) != os.path.basename(model.weights)
            and not os.path.basename(p).startswith("checkpoint_")
        )

    def _load_bundle_config(self, path, config):
        parser = read_configs(path, self.model.infer_configs)
        parser["allow_missing_modalities"] = self.allow_missing
        return parser

    def writer(self, data, extension=None, dtype=None):
        if self.allow_missing:
            data["result"] = {**data.get("result", {}), "missing_sequences": missing_of(data)}
        return super().writer(data, extension, dtype)


class ResUNetTrainTask(train_bundle.BundleTrainTask):
    """Retraining on the datastore's final labels with the bundle's fine-tuning recipe (``model.retrain_configs``:
    the model's train configs with ``finetune.json`` merged last; lib/retraining.py):

    1. the request and the labelled studies are checked (:meth:`plan`): a request that cannot train raises
       :class:`TrainingRequestError` (HTTP 400/409 from the app's train endpoint), never an empty result;
    2. the gate's validation cases are ones that neither the served weights nor the new ones were trained on:
       held-out labelled studies the served weights never saw, and the recipe's held-out synthetic cases (when the
       bundle holds its synthetic data, ``replay_dir``, which is also replayed in training); the served weights
       are scored on them;
    3. the run fine-tunes the served weights (``init_ckpt``; the recipe's learning rate, epochs, frozen BatchNorm
       statistics) into its own folder ``<weights dir>/monailabel_runs/<time>/`` (best model, resumable
       checkpoints, TensorBoard), so no other run's files are touched;
    4. its best model is scored on the same cases and replaces the served weights only if it scores at least as
       well; every served weights file is kept in ``<weights dir>/versions/`` (lib/versions.py) with the studies
       its line of descent was trained on, and can be served again (``POST /versions/<model>/restore``).

    The result (JSON, also ``result.json`` in the run folder) says what was decided and why.
    """

    def __init__(self, bundle_path: str, conf: dict, model: BundleModel, **kwargs):
        self.model = model
        self.progress: collections.deque[str] = collections.deque(maxlen=50)
        super().__init__(bundle_path, conf, const=_TrainConstants(model), load_strict=True, **kwargs)

    def _note(self, message: str, level: int = logging.INFO) -> None:
        """Log a step of the run and keep it in :attr:`progress` (the app's status of a synchronous run shows it;
        the bundle's run reconfigures logging, so a log handler would not see the steps after it)."""
        logger.log(level, message)
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        self.progress.append(f"[{stamp}] {message}")

    def _load_bundle_config(self, path, config):
        return read_configs(path, self.model.retrain_configs)

    @property
    def served_weights(self) -> str:
        return os.path.join(self.bundle_path, "models", self.model.weights)

    @property
    def default_epochs(self) -> int:
        """Epochs of a request that names none: ``--conf max_epochs``, else the recipe's ``epochs``."""
        return int(self.conf.get("max_epochs", self.bundle_config.get_parsed_content("epochs")))

    def config(self):
        options = super().config()
        options["model_filename"] = os.path.basename(self.model.weights)
        options["max_epochs"] = self.default_epochs
        options["val_split"] = DEFAULT_VAL_SPLIT
        return options

    def plan(self, request: dict, datastore) -> dict:
        """The checked options, the split of the labelled studies and the fine-tuning datalist (training: the
        training studies and replayed synthetic cases; validation: the gate's cases); trains nothing.

        Raises:
            TrainingRequestError: a bad option (400), no labelled study or nothing to validate on (409), with a
                message for the client.
        """
        options = check_options(request)
        if options["max_epochs"] is None:
            options["max_epochs"] = self.default_epochs
        studies = [{**c, "case_id": case_id(c)} for c in self._fetch_datalist(request, datastore)]
        recipe = self.bundle_config  # the retraining configs, read once by the task
        replay_dir = recipe.get_parsed_content("replay_dir") or ""
        replay = replay_dir if replay_dir and not is_empty_dataset(replay_dir) else ""
        seen = versions.trained_on(self.served_weights)
        model = request.get("model", "model")
        train, val, validation = split_validation(studies, options["val_split"], model, seen, replay)
        datalist = finetune_datalist(
            train,
            replay,
            recipe.get_parsed_content("replay_folds"),
            val,
            recipe.get_parsed_content("num_replay"),
            recipe.get_parsed_content("seed"),
            recipe.get_parsed_content("real_fraction"),
        )
        validation["validation_cases"] = [c["case_id"] for c in datalist["validation"]]
        if not replay:
            validation["note"] += f"; no synthetic replay data at {replay_dir}: trained on the labelled studies alone"
        return {**options, "seen": seen, "datalist": datalist, "validation": validation}

    def __call__(self, request, datastore):
        logger.info(f"Train Request: {request}")
        self.progress.clear()
        try:
            plan = self.plan(request, datastore)
        except TrainingRequestError as e:
            self._note(f"Training refused (HTTP {e.status}): {e}", logging.ERROR)
            raise
        validation = plan["validation"]
        self._note(f"Validation: {validation['note']}; validation cases {validation['validation_cases']}")
        device = name_to_device(request.get("device", "cuda"))
        run_dir = os.path.join(os.path.dirname(self.served_weights), "monailabel_runs", _stamp())
        val = plan["datalist"]["validation"]
        served = self._score(self.served_weights, val, device, "served weights")
        self._run_training(request, plan, device, run_dir)
        candidate_file = os.path.join(run_dir, "model.pt")
        if not os.path.isfile(candidate_file):
            raise RuntimeError(f"{request.get('model')}: the training run wrote no model ({candidate_file})")
        candidate = self._score(candidate_file, val, device, "new weights")
        result = self._publish(request, plan, served, candidate, candidate_file, run_dir)
        write_json(result, os.path.join(run_dir, "result.json"))
        self._note(f"Retraining result: {result['decision']}; {result['reason']}")
        return result

    def _score(self, weights: str, val: list, device, what: str) -> dict | None:
        if not os.path.isfile(weights):
            self._note(f"No {what} at {weights}: nothing to compare with")
            return None
        metrics = evaluate(read_configs(self.bundle_path, self.model.retrain_configs), weights, val, device)
        self._note(f"Validation of the {what} ({weights}): {metrics}")
        return metrics

    def _run_training(self, request: dict, plan: dict, device, run_dir: str) -> None:
        pretrained = request.get("pretrained", True) and os.path.isfile(self.served_weights)
        epochs = plan["max_epochs"]
        overrides = {
            "bundle_root": self.bundle_path,
            "dataset_dir": run_dir,  # not the default data folder: nothing is generated; the datalist is given
            "datalist": plan["datalist"],
            "init_ckpt": self.served_weights if pretrained else "",
            "ckpt_dir": run_dir,
            "ckpt_path": os.path.join(run_dir, "model.pt"),
            "output_dir": os.path.join(run_dir, "eval"),
            "resume": False,
            "device": device,
            "epochs": epochs,
            # the candidate is the best fine-tuned epoch: the recipe's validation of the starting weights would
            # make them the run's best model whenever no epoch beats them (this task scores the served ones itself)
            "validate_at_start": False,
            # validate at least once however short the run, so that the run's best model is written
            "val_interval": max(1, min(int(self.bundle_config.get_parsed_content("val_interval")), epochs)),
        }
        self._note(f"Training run folder: {run_dir} ({'from the served weights' if pretrained else 'from scratch'})")
        monai.bundle.run(
            run_id=request.get("run_id") or "run",
            init_id=None,
            final_id=None,
            meta_file=self.bundle_metadata_path,
            config_file=[os.path.join(self.bundle_path, "configs", f) for f in self.model.retrain_configs],
            **overrides,
        )

    def _publish(self, request, plan, served, candidate, candidate_file, run_dir) -> dict:
        """Serve the candidate if it validates at least as well as the served weights; keep versions."""
        key = next(iter(candidate))
        replace, reason = decide(served[key] if served else None, candidate[key])
        validation = plan["validation"]
        info = {"metric": key, "validation_cases": validation["validation_cases"], "run_dir": run_dir}
        trained_on = sorted(set(plan["seen"]) | set(validation["training_cases"]))
        result = {
            "model": request.get("model"),
            "decision": "replaced" if replace else "kept",
            "reason": reason,
            "metric": key,
            "validation": validation,
            "served_before": served,
            "new": candidate,
            "epochs": plan["max_epochs"],
            "run_dir": run_dir,
        }
        if replace:
            if served is not None:
                previous = versions.keep(
                    self.served_weights, self.served_weights, served[key], {**info, "trained_on": plan["seen"]}
                )
                result["previous_version"] = previous["name"]
            new = versions.keep(
                candidate_file,
                self.served_weights,
                candidate[key],
                {**info, "trained_by": run_dir, "trained_on": trained_on},
            )
            versions.serve(candidate_file, self.served_weights)
            result["version"] = new["name"]
        return result


def _stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
