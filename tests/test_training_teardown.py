"""The training config leaves no thread of its own running at exit (issue 13: a successful run once ended with
``terminate called without an active exception``): its ``finalize`` closes the TensorBoard writers of the
training and validation handlers, whose background writer threads would otherwise still be alive when the
interpreter shuts down (their event files are flushed too)."""

import threading
from pathlib import Path

from monai.bundle import ConfigParser
from monai.handlers import TensorBoardHandler

from scripts.synthetic.phantom import write_dataset
from tests._bundle import ROOT


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if type(t).__name__ == "_AsyncWriterThread" and t.is_alive()]


def test_finalize_closes_the_tensorboard_writers(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, num_cases=3, seed=2, shape=(24, 24, 24), progress=False)
    merged = ConfigParser()
    merged.read_config([str(ROOT / "configs" / f) for f in ("train.json", "multi_gpu_train.json")])
    assert len(merged["finalize"]) == 2 and "TensorBoardHandler" in merged["finalize"][0]  # the overlay appends
    parser = ConfigParser()
    parser.read_meta(str(ROOT / "configs" / "metadata.json"))
    parser.read_config(str(ROOT / "configs" / "train.json"))
    parser.update(
        {"bundle_root": str(tmp_path), "dataset_dir": str(data), "num_folds": 2, "num_workers": 0, "device": "cpu"}
    )
    parser.parse()
    before = set(_writer_threads())
    handlers = parser.get_parsed_content("train#handlers") + parser.get_parsed_content("validate#handlers")
    assert sum(isinstance(h, TensorBoardHandler) for h in handlers) == 2
    assert len(set(_writer_threads()) - before) == 2
    parser.get_parsed_content("finalize")
    assert set(_writer_threads()) - before == set()
    assert len(list(Path(tmp_path / "eval").glob("events.out.tfevents.*"))) == 2
