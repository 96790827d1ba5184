"""What the per-case workflows (``report``, ``robustness``) share: the weights, a skipping loader over the cases,
one try per case with a progress line (``[3/20] case_id: 4.1 s -> path (ETA ...)``), and the end-of-run list of
the cases that failed.

Also the one way to build a network from the configs with its weights, used by every script, benchmark and the
MONAI Label app: :func:`parse_configs` (a config list with overrides), :func:`load_weights` (``weights_only``
loading with one-line errors) and :func:`load_network` (both). Their errors are one line: ``SystemExit`` for the
configs and command lines, or :class:`CheckpointError` with ``exit_on_error=False`` (the app)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import decollate_batch

from scripts.data.checks import (
    CheckedDataset,
    SkippingDataLoader,
    case_id_of,
    check_output_dirs,
    failure,
    format_failure,
)
from scripts.handlers import CaseProgress, CheckpointError, checkpoint_errors, read_weights

logger = logging.getLogger(__name__)


def parse_configs(config_files: str | Sequence[str], overrides: Mapping | None = None) -> ConfigParser:
    """A ``ConfigParser`` of the ``config_files`` merged in order (later files patch earlier ids), with the
    ``overrides`` (ids as on the command line, e.g. ``{"network_def#channels": [8, 16, 32, 64]}``) applied."""
    parser = ConfigParser()
    parser.read_config(config_files)
    parser.update(dict(overrides or {}))
    return parser


def load_network(
    config_files: str | Sequence[str],
    ckpt_path: str,
    device: str | torch.device = "cpu",
    overrides: Mapping | None = None,
    net_id: str = "network_def",
    exit_on_error: bool = True,
) -> torch.nn.Module:
    """``net_id`` of the merged ``config_files`` (with ``overrides``, :func:`parse_configs`) with the weights of
    ``ckpt_path`` (:func:`load_weights`: a state dict or a full training checkpoint), on ``device``, in eval
    mode, gradients off.

    Raises:
        CheckpointError: (``SystemExit("error: checkpoint <path> ...")`` with ``exit_on_error``) one line: the file
            is missing, unreadable or holds the weights of another network.
    """
    network = parse_configs(config_files, overrides).get_parsed_content(net_id)
    load_weights(network, ckpt_path, "cpu", exit_on_error).to(device)
    for p in network.parameters():
        p.requires_grad_(False)
    return network


def load_weights(network: torch.nn.Module, path, device, exit_on_error: bool = True) -> torch.nn.Module:
    """Load a state dict (or a ``{"model": state_dict}`` checkpoint) into ``network``; returns it in eval mode.

    Raises:
        CheckpointError: (``SystemExit("error: checkpoint <path> ...")`` with ``exit_on_error``,
            :func:`scripts.handlers.checkpoint_errors`) one line: the file is missing, unreadable
            (:func:`scripts.handlers.read_checkpoint`) or holds the weights of another network (:func:`misfit`).
    """
    with checkpoint_errors(exit_on_error):
        state = read_weights(path, map_location=device)
        problem = misfit(network, state)
        if problem:
            raise CheckpointError(f"checkpoint {path} does not fit the configured {type(network).__name__}: {problem}")
        network.load_state_dict(state)
        return network.eval()


def misfit(network: torch.nn.Module, state: dict) -> str:
    """How the weights ``state`` do not fit ``network`` (missing, unexpected and other-shape keys, with the first
    of each); ``""`` when they fit."""
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and getattr(state[k], "shape", None) != own[k].shape]
    found = [(missing, "missing"), (unexpected, "unexpected"), (shapes, "of another shape")]
    parts = [f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in found if keys]
    if shapes:
        k = shapes[0]
        parts[-1] += f": {list(getattr(state[k], 'shape', []))} vs {list(own[k].shape)}"
    return "; ".join(parts) + (" (other --network_def settings?)" if parts else "")


def sources_of(item: dict) -> list[str]:
    """The input files of a preprocessed item (from the image's metadata)."""
    return [str(s) for s in np.atleast_1d(item["image"].meta.get("filename_or_obj", "<unknown>"))]


class CaseWorkflow:
    """Base of a workflow that loads ``network``'s weights from ``ckpt_path`` and processes every case of
    ``datalist`` with :meth:`process` (subclasses), skipping the cases that fail."""

    desc = "cases"
    allow_missing_modalities = False
    """Accept a case that lacks some of its sequence files (``--allow_missing_modalities``; subclasses set it)."""

    def __init__(
        self,
        datalist: Sequence[dict],
        network: torch.nn.Module,
        inference_network: torch.nn.Module,
        inferer,
        ckpt_path: str,
        output_dir: str,
        device="cpu",
    ) -> None:
        self.datalist = list(datalist)
        self.network, self.inference_network, self.inferer = network, inference_network, inferer
        self.ckpt_path, self.output_dir, self.device = str(ckpt_path), Path(output_dir), torch.device(device)

    def process(self, item: dict):
        raise NotImplementedError

    def outputs(self) -> list[tuple[str, Path]]:
        """``(case id or workflow, path)`` of every file the run may write (subclasses)."""
        raise NotImplementedError

    def each_case(self, transform) -> tuple[list, list[dict]]:
        """(results of :meth:`process`, failure records) over the cases, ``transform`` applied to each; first,
        with nothing written yet, a run that would overwrite an input file (one of :meth:`outputs` is one of the
        cases' files) exits with one line (``scripts.data.checks.check_output_dirs``)."""
        check_output_dirs(self.output_dir, inputs=self.datalist, outputs=self.outputs(), exit_on_error=True)
        load_weights(self.network, self.ckpt_path, self.device)
        dataset = CheckedDataset(self.datalist, transform, allow_missing_modalities=self.allow_missing_modalities)
        loader = SkippingDataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)
        results, failures = [], []
        progress, outputs = CaseProgress(len(dataset), logger), {}
        for case_id, path in self.outputs():
            outputs.setdefault(str(case_id), str(path))
        for batch in loader:
            item = decollate_batch(batch)[0]
            case_id = case_id_of(item)
            try:
                result = self.process(item)
                results.append(result)
            except Exception as e:  # one bad case must not stop the others
                source = item.get("reference") if "reference" in str(e) else sources_of(item)[0]
                failures.append(failure(case_id, source, f"{type(e).__name__}: {e}"))
                logger.warning("case skipped: %s", format_failure(failures[-1]))
                progress.case_done(case_id, "failed")
                continue
            output = result if isinstance(result, (str, Path)) else outputs.get(case_id, self.output_dir)
            progress.case_done(case_id, str(output))
        return results, loader.failures + failures
