"""The fine-tuning recipe (``configs/finetune.json``) and checkpoint averaging: the datalist mixes the real cases
with replayed synthetic ones and validates on held-out cases only, the BatchNorm statistics stay those of the
starting weights, and a real ``python -m monai.bundle run training`` with the overlay starts from given weights,
validates before and after, and writes ``<ckpt_dir>/model.pt``."""

import json
import os
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigParser

from scripts.averaging import average_checkpoints
from scripts.finetune import finetune_datalist, freeze_norm_statistics, freeze_parameters
from scripts.networks import ResUNet
from scripts.synthetic.phantom import write_dataset
from tests._bundle import ROOT, TINY_NETWORK


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    write_dataset(root / "real", num_cases=1, seed=5, shape=(48, 56, 40), progress=False)
    write_dataset(root / "replay", num_cases=8, seed=6, shape=(48, 56, 40), progress=False)
    return root


def test_datalist_mixes_real_and_replayed_cases_and_validates_on_held_out(folders):
    lists = finetune_datalist(folders / "real", folders / "replay", replay_folds=4, num_replay=4, seed=0)
    real = [c for c in lists["training"] if "replay" not in c["image"][0]]
    replay = [c for c in lists["training"] if "replay" in c["image"][0]]
    assert len(real) == 1 and len(replay) == 4  # each case once: preprocessed and cached once
    weights = lists["sampling_weights"]
    assert len(weights) == 5 and weights[0] == pytest.approx(0.5) and sum(weights[1:]) == pytest.approx(0.5)
    assert len({tuple(sorted(c)) for c in lists["training"]}) == 1  # one batch collates real and replayed items
    held_out = {c["case_id"] for c in lists["validation"]}
    assert held_out and not held_out & {c["case_id"] for c in lists["training"]}
    with pytest.raises(ValueError, match="needs held-out cases"):
        finetune_datalist(folders / "real", None)
    with_val = finetune_datalist(folders / "real", None, val_dir=folders / "replay")
    assert len(with_val["validation"]) == 8 and with_val["sampling_weights"] == [1.0]


def test_cases_come_from_a_folder_a_plain_datalist_or_the_entries_themselves(folders, tmp_path):
    """A datalist JSON without folds (e.g. one corrected case) and a list of entries (a MONAI Label datastore's
    labelled studies) give the same cases as the folder; an entry that is not a case is skipped, none left is an
    error."""
    lists = finetune_datalist(folders / "real", None, val_dir=folders / "replay")
    real = lists["training"]
    datalist = tmp_path / "corrections.json"
    datalist.write_text(json.dumps({"training": real}))
    from_json = finetune_datalist(datalist, None, val_dir=folders / "replay")
    from_entries = finetune_datalist(real, None, val_dir=lists["validation"][:2])
    assert from_json["training"] == from_entries["training"] == real
    assert [c["case_id"] for c in from_entries["validation"]] == [c["case_id"] for c in lists["validation"][:2]]
    bad = {"case_id": "no_image", "label": real[0]["label"]}
    assert finetune_datalist([*real, bad], None, val_dir=real)["training"] == real
    with pytest.raises(FileNotFoundError, match="no labelled case to fine-tune on"):
        finetune_datalist([bad], None, val_dir=real)
    with pytest.raises(FileNotFoundError, match="datalist file does not exist"):
        finetune_datalist(tmp_path / "none.json", None, val_dir=real)


def test_frozen_norm_statistics_do_not_move_while_weights_learn():
    torch.manual_seed(0)
    net = freeze_norm_statistics(ResUNet(3, 4, 3, channels=(4, 8), strides=(1, 2), norm="batch")).train()
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d))
    mean, weight = bn.running_mean.clone(), bn.weight.detach().clone()
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = net(torch.randn(2, 4, 16, 16, 16) * 3 + 2).mean()
    loss.backward()
    optimiser.step()
    assert torch.equal(bn.running_mean, mean) and not torch.equal(bn.weight, weight)


def test_frozen_modules_do_not_learn_and_a_typo_is_an_error():
    torch.manual_seed(0)
    net = freeze_parameters(ResUNet(3, 4, 3, channels=(4, 8), strides=(1, 2), norm="batch"), ["encoder"])
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    optimiser = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.randn(2, 4, 16, 16, 16)).mean().backward()
    optimiser.step()
    after = dict(net.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert not torch.equal(before["head.weight"], after["head.weight"])
    with pytest.raises(ValueError, match="names no parameter"):
        freeze_parameters(net, ["encoderr"])


def test_average_of_checkpoints(tmp_path):
    a = {"w": torch.zeros(3), "n": torch.tensor(1)}
    b = {"w": torch.ones(3) * 2, "n": torch.tensor(5)}
    torch.save(a, tmp_path / "a.pt")
    torch.save({"model": b}, tmp_path / "b.pt")
    out = average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"])
    assert torch.equal(out["w"], torch.ones(3)) and int(out["n"]) == 5


@pytest.mark.slow
def test_finetune_run_starts_from_weights_and_writes_model(folders, tmp_path):
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train.json"))
    parser.update({"bundle_root": str(ROOT), "network_def#channels": [8, 16, 32, 64]})
    torch.manual_seed(0)
    start = tmp_path / "start.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), start)
    out = tmp_path / "ft"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", "configs/metadata.json",
        "--config_file", "['configs/train.json','configs/finetune.json']", "--bundle_root", str(tmp_path),
        "--dataset_dir", str(folders / "real"), "--replay_dir", str(folders / "replay"), "--replay_folds", "4",
        "--num_replay", "2", "--init_ckpt", str(start), "--ckpt_dir", str(out), "--output_dir", str(out),
        *TINY_NETWORK, "--epochs", "1", "--train#trainer#epoch_length", "1", "--num_samples", "1",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "fine-tuning on 1 real case(s)" in log and "2 replayed synthetic case(s)" in log, log[-4000:]
    assert log.count("val_mean_dice") >= 2, log[-4000:]  # before and after
    assert (out / "model.pt").is_file() and (out / "checkpoint_epoch=1.pt").is_file()
