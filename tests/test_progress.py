"""Quiet, informative runs: one progress line per case with its final output path and the batch's ETA, the ONNX
export cached across runs, and no third-party plugin or deprecated-key warnings."""

import os
import re
import subprocess
import sys

import pytest

from scripts import handlers
from scripts.handlers import CaseProgress, format_seconds
from tests._bundle import ROOT, TINY_NETWORK, tiny_checkpoint


def test_format_seconds():
    assert [format_seconds(s) for s in (4.14, 59.94, 125, 3725)] == ["4.1 s", "59.9 s", "2 min 05 s", "1 h 02 min"]


def test_case_progress_counts_times_and_estimates_the_rest(monkeypatch):
    clock = iter([100.0, 104.0, 110.0, 113.0])
    monkeypatch.setattr(handlers.time, "perf_counter", lambda: next(clock))
    progress = CaseProgress(total=3)
    assert progress.case_done("a", "out/a.nii.gz") == "[1/3] a: 4.0 s -> out/a.nii.gz (ETA 8.0 s)"
    assert progress.case_done("b", "out/b.nii.gz", "network 5.0 s") == (
        "[2/3] b: 6.0 s (network 5.0 s) -> out/b.nii.gz (ETA 5.0 s)"
    )
    assert progress.case_done("c") == "[3/3] c: 3.0 s"  # the last case: no ETA


def test_case_progress_without_a_total_has_no_eta(monkeypatch):
    clock = iter([0.0, 2.0])
    monkeypatch.setattr(handlers.time, "perf_counter", lambda: next(clock))
    assert CaseProgress().case_done("x", "p") == "[1] x: 2.0 s -> p"


@pytest.mark.slow
def test_inference_prints_one_progress_line_per_case_with_the_final_path_and_caches_the_export(tmp_path):
    from scripts.synthetic.phantom import write_dataset

    write_dataset(tmp_path / "data", num_cases=2, seed=5, shape=(40, 48, 32), progress=False)
    ckpt, out, cache = tiny_checkpoint(tmp_path), tmp_path / "pred", tmp_path / "xdg"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--meta_file", str(ROOT / "configs" / "metadata.json")]
    cmd += ["--config_file", str(ROOT / "configs" / "inference.json"), "--bundle_root", str(ROOT), *TINY_NETWORK]
    cmd += ["--dataset_dir", str(tmp_path / "data"), "--output_dir", str(out), "--ckpt_path", str(ckpt)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(cache))
    runs = [subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600) for _ in range(2)]
    for proc in runs:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    first, second = (p.stdout + p.stderr for p in runs)
    cases = sorted(p.name[: -len(".nii.gz")] for p in out.iterdir())
    assert len(cases) == 2
    for i, case_id in enumerate(cases, 1):
        line = rf"\[{i}/2\] {case_id}: [\d.]+ s \(data [\d.]+ s, network [\d.]+ s, post-processing [\d.]+ s\)"
        line += rf" -> {re.escape(str(out / (case_id + '.nii.gz')))}"
        assert re.search(line + (r" \(ETA [\d.]+ s\)" if i == 1 else r"$"), first, re.M), first[-3000:]
    for noise in ("tmp-resunet", "nvImageCodec", "NvImgCodec", "optional_packages_version", "Detected deprecated"):
        assert noise not in first, noise
    exported = list((cache / "resunet-brats" / "onnx").iterdir())
    assert len(exported) == 1 and exported[0].name.endswith("-opset17.onnx")
    assert "ONNX model exported and cached" in first and f"ONNX model from the cache: {exported[0]}" in second


def test_tracking_mlflow_without_mlflow_is_one_error_line(monkeypatch):
    from scripts import options

    real = options.importlib.util.find_spec
    monkeypatch.setattr(options.importlib.util, "find_spec", lambda m: None if m == "mlflow" else real(m))
    with pytest.raises(SystemExit, match="requirements-tracking.txt"):
        options.check_tracking("mlflow")
    options.check_tracking(None)  # no tracking asked for: nothing to check


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_tta_flips_per_call_must_be_a_whole_number_of_at_least_one(value):
    from scripts.options import VALUE_CHECKS

    with pytest.raises(SystemExit, match="--tta_flips_per_call"):
        VALUE_CHECKS["tta_flips_per_call"](value, "tta_flips_per_call")
    assert VALUE_CHECKS["tta_flips_per_call"](4, "tta_flips_per_call") == 4


def test_plugin_warnings_are_silenced_and_metadata_uses_the_current_key():
    import json
    import logging
    import warnings

    import scripts  # noqa: F401  (import scripts calls options.quiet_third_party)

    assert logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").getEffectiveLevel() >= logging.ERROR
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        scripts.options.quiet_third_party()
        warnings.warn(
            "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully.", stacklevel=1
        )
    assert caught == []
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    assert "optional_packages_version" not in meta and "mlflow" not in meta["required_packages_version"]


def test_skip_teardown_returns_outside_the_command_line_and_with_tracking_or_finalize(tmp_path, monkeypatch):
    from scripts import options

    monkeypatch.setattr(options.os, "_exit", lambda code: pytest.fail(f"os._exit({code}) called"))
    options.skip_teardown(["pytest", "tests"])  # not the bundle command line
    bundle = str(ROOT.parent / "monai" / "bundle" / "__main__.py")  # how sys.argv[0] reads under python -m
    inference = str(ROOT / "configs" / "inference.json")
    options.skip_teardown([bundle, "run", "--config_file", inference, "--tracking", "mlflow"])
    overlay = tmp_path / "finalize.json"
    overlay.write_text('{"finalize": ["$print(1)"]}')
    options.skip_teardown([bundle, "run", "--config_file", str([inference, str(overlay)])])
    exits = []
    monkeypatch.setattr(options.os, "_exit", exits.append)
    options.skip_teardown([bundle, "run", "--config_file", inference])
    assert exits == [0]


def test_a_single_case_is_loaded_in_the_main_process_and_a_batch_by_the_workers(tmp_path, arrays):
    from scripts.casework import parse_configs
    from scripts.options import prefetch_workers
    from tests._inputs import write_case

    for n in (1, 2):
        write_case(tmp_path / f"n{n}", "case_a", arrays)
        if n == 2:
            write_case(tmp_path / f"n{n}", "case_b", arrays)
        overrides = {"bundle_root": str(ROOT), "dataset_dir": str(tmp_path / f"n{n}"), "num_workers": 2}
        loader = parse_configs([str(ROOT / "configs" / "inference.json")], overrides).get_parsed_content("dataloader")
        assert loader.loader.num_workers == (0 if n == 1 else 2)
    assert prefetch_workers(0, 5) == 0
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(SystemExit, match="--num_workers"):
            prefetch_workers(bad, 5)
