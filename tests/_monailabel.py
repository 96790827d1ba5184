"""Shared by the MONAI Label tests (test_monailabel_server, test_pacs, test_ohif_browser): a server on a free
loopback port, HTTP requests and multipart bodies, the regions of a label map and their Dice, file checksums, a
short fine-tuning recipe."""

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from apps import server
from scripts.conventions import REGIONS
from scripts.metrics import dice
from scripts.transforms import label_to_regions

REAL_CASE = "TCGA-DU-7294"  # examples/TCGA-DU-7294, the bundled real case


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(method, url, data=None, headers=None, timeout=600):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def multipart(fields, files):
    """A multipart/form-data body: ``fields`` name -> text, ``files`` name -> (filename, bytes)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"
    }


@contextlib.contextmanager
def serving(venv_dir, studies, conf, log_path, app_dir=server.APP_DIR):
    """A MONAI Label server on a free loopback port serving ``app_dir`` over ``studies``: yields its URL and
    ``/info/``, stops it afterwards."""
    port = free_port()
    cmd = server.server_command(venv_dir, str(studies), "127.0.0.1", port, conf, app_dir)
    log = open(log_path, "w")
    proc = subprocess.Popen(
        cmd, env=server.server_env(venv_dir), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # a server that crashes is seen at once (poll); one slow to start on busy cores is given time
        deadline = time.monotonic() + 900
        while True:
            try:
                info = json.loads(request("GET", f"{url}/info/", timeout=10))
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"server did not come up (exit {proc.poll()}):\n{log_path.read_text()[-6000:]}")
                time.sleep(2)
        yield url, info
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def label_regions(label):
    """The regions (``"tc"``, ``"wt"``, ``"et"``, as the validation metrics name them) a label map has voxels of."""
    masks = label_to_regions(torch.as_tensor(np.asarray(label))[None])
    return {region.lower() for region, mask in zip(REGIONS, masks) if mask.any()}


def region_dice(pred, ref):
    """Dice per region (TC, WT, ET) of two BraTS label maps (nibabel images); a region absent from both scores 1."""
    masks = [label_to_regions(torch.as_tensor(np.asarray(x.dataobj))[None]).numpy() for x in (pred, ref)]
    return {region: dice(p, r) for region, p, r in zip(REGIONS, *masks)}


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def short_finetune(root):
    """The bundle copy's fine-tuning recipe (what the app's retraining runs) made short for 2 CPU cores: 32³
    patches, one patch per case, 2 steps per epoch. Everything else is the shipped recipe."""
    path = Path(root) / "configs" / "finetune.json"
    recipe = json.loads(path.read_text())
    recipe.update({"roi_size": [32, 32, 32], "num_samples": 1, "train#trainer#epoch_length": 2})
    path.write_text(json.dumps(recipe, indent=4))
