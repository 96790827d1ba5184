"""What a user types reaches the configs as meant (issue 27): ``false`` means false, an override naming no id is an
error with the closest id, wrong values and damaged checkpoints are one error line, never a traceback.

The configs are the real ``configs/*.json``; the runs are real ``python -m monai.bundle run`` subprocesses on tiny
phantom cases (the fixtures of ``tests/conftest.py``).
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from scripts import options
from scripts.casework import CheckpointError, load_network, load_weights
from scripts.handlers import TrainingCheckpoint
from scripts.inferers import FlipTTAInferer
from tests._inputs import TINY, bundle, checksums, error_lines, write_case

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
BUNDLE_MAIN = str(Path(sys.modules["monai"].__file__).parent / "bundle" / "__main__.py")
META = ["--meta_file", str(CONFIGS / "metadata.json")]


def command_line(*args, configs=("inference.json",)) -> list[str]:
    """``sys.argv`` of ``python -m monai.bundle run <args> --meta_file ... --config_file [...]``."""
    return [BUNDLE_MAIN, "run", *args, *META, "--config_file", str([str(CONFIGS / c) for c in configs])]


def check_fails(*args, configs=("inference.json",)) -> str:
    with pytest.raises(SystemExit) as e:
        options.check_command_line(command_line(*args, configs=configs))
    message = str(e.value)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def parsed(config_files, **overrides):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in config_files])
    parser.update({"bundle_root": str(ROOT), **overrides})
    return parser


# ----------------------------------------------------------------------------------------------- booleans
@pytest.mark.parametrize("word", ["true", "TRUE", "Yes", "1", True, 1])
def test_true_words(word):
    assert options.as_bool(word, "tta") is True


@pytest.mark.parametrize("word", ["false", "False", "NO", "0", False, 0])
def test_false_words(word):
    assert options.as_bool(word, "tta") is False


@pytest.mark.parametrize("word", ["maybe", "", "off", 2, None, [1]])
def test_other_values_are_one_error_line(word):
    with pytest.raises(SystemExit, match=r"^error: --tta .*not a boolean"):
        options.as_bool(word, "tta")


def test_every_top_level_boolean_id_is_read_through_as_bool():
    """A boolean id read as ``@id`` anywhere else would take the word 'false' for true."""
    texts = {p.name: p.read_text() for p in sorted(CONFIGS.glob("*.json"))}
    flags = {k for text in texts.values() for k, v in json.loads(text).items() if isinstance(v, bool)}
    assert {"tta", "plot", "resume", "overwrite_shipped"} <= flags
    flags.add("amp")  # its value is an expression (the device's), its overrides are words like the others
    for name, text in texts.items():
        for flag in flags:
            reads, parsed_reads = len(re.findall(rf"@{flag}\b", text)), text.count(f"as_bool(@{flag}, '{flag}')")
            assert reads == parsed_reads, f"{name}: @{flag} read without scripts.options.as_bool"


@pytest.mark.parametrize("word", ["false", "no", "0"])
def test_false_turns_the_options_off_in_the_real_configs(word, tmp_path):
    inference = parsed(["inference.json"], tta=word, device="cpu", amp=word)
    assert not isinstance(inference.get_parsed_content("inferer"), FlipTTAInferer)
    assert inference.get_parsed_content("evaluator#amp") is False
    training = parsed(["train.json"], resume=word, ckpt_dir=str(tmp_path), device="cpu", num_workers=0)
    assert training.get_parsed_content("train#checkpoint#resume") is False
    evaluate = json.loads((CONFIGS / "evaluate.json").read_text())
    assert "scripts.options.as_bool(@plot, 'plot')" in evaluate["run"][-1]


def test_true_words_turn_tta_on():
    inference = parsed(["inference.json"], tta="Yes", device="cpu")
    assert isinstance(inference.get_parsed_content("inferer"), FlipTTAInferer)


@pytest.mark.slow
def test_overwrite_shipped_false_keeps_the_shipped_weights(tmp_path):
    """The issue's run: ``--overwrite_shipped false`` overwrote models/model.pt; now the guard stops it."""
    weights = tmp_path / "models" / "model.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"shipped weights")
    md5 = hashlib.md5(weights.read_bytes()).hexdigest()
    (tmp_path / "large_files.yml").write_text(f"large_files:\n  - path: models/model.pt\n    hash_val: {md5}\n")
    before = checksums(tmp_path)
    proc = bundle("training", "--bundle_root", str(tmp_path), "--ckpt_dir", str(weights.parent),
                  "--overwrite_shipped", "false", "--epochs", "1", configs=("train.json",))  # fmt: skip
    assert proc.returncode != 0, proc.stderr[-3000:]
    (line,) = error_lines(proc.stderr)
    assert "holds the shipped weights" in line, line
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert checksums(tmp_path) == before


# --------------------------------------------------------------------------- overrides and their values
@pytest.mark.parametrize(
    "args, expected",
    [
        (["--ttaa", "true"], "--ttaa: no such id in the configs; did you mean --tta?"),
        (["--overlapp", "0.9"], "--overlapp: no such id in the configs; did you mean --overlap?"),
        (["--sw_inferer#overlapp", "0.9"], "did you mean --sw_inferer#overlap?"),
        (["--tta", "maybe"], "--tta 'maybe': not a boolean"),
        (["--amp", "off"], "--amp 'off': not a boolean"),
        (["--dataloader#shuffle", "false"], "a component argument is passed as written; write False"),
        (["--brats_labels", "[1,2,2]"], "the three label values must differ"),
        (["--brats_labels", "[1,2]"], "give three label values"),
        (["--brats_labels", "[0,1,2]"], "positive integers"),
        (["--overlap", "1.0"], "from 0 up to (not including) 1"),
        (["--window_size", "[36,36]"], "give three sizes"),
    ],
)
def test_bad_overrides_are_one_error_line(args, expected):
    assert expected in check_fails(*args)


def test_overrides_of_ids_and_component_arguments_pass():
    argv = command_line("--tta", "FALSE", "--overlap", "0.5", "--brats_labels", "[1,2,3]", "--window_size",
                        "[-1,-1,-1]", "--sw_inferer#sw_device", "cpu", "--network_def#channels", "[8,16,32,64]")  # fmt: skip
    options.check_command_line(argv)
    train = ("train.json", "synthetic_train.json")
    argv = command_line("training", "--resume=no", "--train#checkpoint#n_saved", "3", "--tracking", "mlflow",
                        "--run_name", "x", "--train#trainer#epoch_length", "2", configs=train)  # fmt: skip
    options.check_command_line(argv)


def test_an_id_of_another_config_is_unknown_here():
    assert "--num_folds: no such id" in check_fails("--num_folds", "3")  # inference has no folds
    options.check_command_line(command_line("--num_folds", "3", configs=("train.json",)))


def test_other_command_lines_are_not_checked():
    options.check_command_line(["pytest", "--ttaa", "true"])
    options.check_command_line([BUNDLE_MAIN, "ckpt_export", "--ttaa", "true"])


def test_window_size_must_suit_the_network():
    network = parsed(["inference.json"], device="cpu").get_parsed_content("network_def")
    assert options.window_size([-1, 96, 48], network) == [-1, 96, 48]
    with pytest.raises(
        SystemExit, match=r"^error: --window_size \[36, 36, 36\]: ResUNet needs .* multiple of \[8, 8, 8\]"
    ):
        options.window_size([36, 36, 36], network)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, expected",
    [
        (["--ttaa", "true"], "error: --ttaa: no such id in the configs; did you mean --tta?"),
        (["--brats_labels", "[1,2,2]"], "error: --brats_labels [1, 2, 2]: the three label values must differ"),
        (["--window_size", "[36,36,36]"], "error: --window_size [36, 36, 36]: ResUNet needs each size"),
        (["--overlap", "1.0"], "error: --overlap 1.0: the overlap must be a number from 0"),
    ],
)
def test_bad_overrides_stop_the_run_with_one_line(args, expected, arrays, checkpoint, tmp_path):
    line = failed_inference(tmp_path, arrays, "--ckpt_path", str(checkpoint), *args)
    assert line.startswith(expected), line


def failed_inference(tmp_path: Path, arrays: dict, *args: str) -> str:
    """The one error line of an inference run over one case with ``args`` that must fail: no traceback, the
    input unchanged, nothing written."""
    data, out = tmp_path / "data", tmp_path / "out"
    write_case(data, "BraTS20_Training_001", arrays)
    before = checksums(data)
    proc = bundle("--bundle_root", str(tmp_path), "--dataset_dir", str(data), "--output_dir", str(out),
                  "--num_workers", "0", *TINY, *args)  # fmt: skip
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert checksums(data) == before and not list(out.glob("*.nii.gz"))
    (line,) = error_lines(proc.stderr)
    return line


# ------------------------------------------------------------------------------------------------ checkpoints
def damaged_checkpoints(folder: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    paths = {name: folder / f"{name}.pt" for name in ("truncated", "empty", "text", "list")}
    paths["truncated"].write_bytes(data[: len(data) // 2])
    paths["empty"].write_bytes(b"")
    paths["text"].write_text("not weights")
    torch.save([1, 2], paths["list"])
    return paths


def test_damaged_or_foreign_checkpoints_are_one_error_line(checkpoint, tmp_path):
    network = parsed(["inference.json"], device="cpu", **{"network_def#channels": [8, 16, 32, 64]})
    network = network.get_parsed_content("network_def")
    for name, path in damaged_checkpoints(tmp_path, checkpoint).items():
        with pytest.raises(SystemExit, match=rf"^error: checkpoint {re.escape(str(path))}: ") as e:
            load_weights(network, path, "cpu")
        assert "\n" not in str(e.value), name
    wide = parsed(["inference.json"], device="cpu").get_parsed_content("network_def")  # the default channels
    with pytest.raises(SystemExit, match=r"does not fit the configured ResUNet: .* of another shape") as e:
        load_weights(wide, checkpoint, "cpu")
    assert "\n" not in str(e.value)
    assert load_weights(network, checkpoint, "cpu") is network  # the right weights still load


def test_without_exit_on_error_a_bad_checkpoint_raises_the_same_line_for_a_server(checkpoint, tmp_path):
    """``exit_on_error=False`` (the MONAI Label app): a ``CheckpointError`` (a ``ValueError``) whose message is the
    command line's error without ``error: ``."""
    network = parsed(["inference.json"], device="cpu", **{"network_def#channels": [8, 16, 32, 64]})
    network = network.get_parsed_content("network_def")
    wide = parsed(["inference.json"], device="cpu").get_parsed_content("network_def")
    bad = [(network, p) for p in damaged_checkpoints(tmp_path, checkpoint).values()]
    bad += [(network, tmp_path / "missing.pt"), (wide, checkpoint)]
    for net, path in bad:
        with pytest.raises(SystemExit) as exited:
            load_weights(net, path, "cpu")
        with pytest.raises(CheckpointError, match=rf"^checkpoint {re.escape(str(path))}[: ]") as raised:
            load_weights(net, path, "cpu", exit_on_error=False)
        assert isinstance(raised.value, ValueError) and "\n" not in str(raised.value)
        assert str(exited.value) == f"error: {raised.value}"
    with pytest.raises(CheckpointError, match="not found"):
        load_network([str(CONFIGS / "inference.json")], str(tmp_path / "missing.pt"), exit_on_error=False)


@pytest.mark.slow
def test_inference_with_a_truncated_checkpoint_is_one_error_line(arrays, checkpoint, tmp_path):
    bad = damaged_checkpoints(tmp_path, checkpoint)["truncated"]
    line = failed_inference(tmp_path, arrays, "--ckpt_path", str(bad))
    assert line.startswith(f"error: checkpoint {bad}: cannot be read as PyTorch weights"), line


def test_resume_from_a_truncated_newest_checkpoint_names_the_file(tmp_path):
    net = torch.nn.Linear(1, 1)
    torch.save({"model": net.state_dict()}, tmp_path / "checkpoint_epoch=1.pt")
    newest = tmp_path / "checkpoint_epoch=2.pt"
    newest.write_bytes((tmp_path / "checkpoint_epoch=1.pt").read_bytes()[:100])
    handler = TrainingCheckpoint(str(tmp_path), {"model": net}, resume=True)
    with pytest.raises(SystemExit, match=rf"^error: checkpoint {re.escape(str(newest))}: cannot be read"):
        handler.attach(_Engine())
    with pytest.raises(SystemExit, match=r"^error: --resume: .* holds no checkpoint_epoch=N.pt"):
        TrainingCheckpoint(str(tmp_path / "empty"), {"model": net}, resume=True).attach(_Engine())


class _Engine:
    """Just what ``TrainingCheckpoint.attach`` uses of an ignite engine."""

    logger = None

    def add_event_handler(self, *args):
        pass


# --------------------------------------------------------------------------------------- a bad training case
@pytest.mark.slow
def test_label_3_in_a_brats_2020_training_set_is_one_error_line(arrays, tmp_path):
    data = tmp_path / "data"
    for i in range(1, 4):
        write_case(data, f"BraTS20_Training_00{i}", arrays)
    seg = data / "BraTS20_Training_002" / "BraTS20_Training_002_seg.nii.gz"
    label = np.asarray(arrays["seg"]).copy()
    label[label == 4] = 3
    write_case(data, "BraTS20_Training_002", {**arrays, "seg": label})
    proc = bundle("training", "--bundle_root", str(tmp_path), "--dataset_dir", str(data), "--num_folds", "3",
                  "--epochs", "1", "--num_workers", "0", *TINY, configs=("train.json",))  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    (line,) = error_lines(proc.stderr)
    assert line == f"error: {seg}: label values [3] are outside the expected set [0, 1, 2, 4] " + (
        "(necrotic, oedema, enhancing = [1, 2, 4])"
    ), line
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_export_never_overwrites_its_input_weights(tmp_path):
    """``ckpt_export --filepath W --ckpt_file W`` stops with one line before writing; the weights are unchanged."""
    weights = tmp_path / "model.pt"
    weights.write_bytes((ROOT / "models" / "model.pt").read_bytes())
    before = hashlib.md5(weights.read_bytes()).hexdigest()
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(weights)]
    cmd += ["--ckpt_file", str(weights), "--meta_file", str(ROOT / "configs" / "metadata.json")]
    cmd += ["--config_file", str(ROOT / "configs" / "inference.json")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert error_lines(proc.stderr) == [
        f"error: --filepath {weights} would overwrite the input --ckpt_file {weights}; export to another file"
    ], proc.stderr[-2000:]
    assert hashlib.md5(weights.read_bytes()).hexdigest() == before


def test_export_target_check_ignores_other_commands(tmp_path):
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"x")
    main = str(Path(options.__file__).parents[1] / "x" / "monai" / "bundle" / "__main__.py")
    options.check_export_target(
        [main, "ckpt_export", "--filepath", str(tmp_path / "new.ts"), "--ckpt_file", str(weights)]
    )
    options.check_export_target([main, "run", "--filepath", str(weights), "--ckpt_file", str(weights)])
    with pytest.raises(SystemExit, match="would overwrite the input --ckpt_file"):
        options.check_export_target([main, "onnx_export", "--filepath", str(weights), "--ckpt_file", str(weights)])
