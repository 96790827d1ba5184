"""Versions of a served weights file: every weights file the server has served is kept, and can be served again.

For the served weights ``<dir>/model.pt`` the versions live in ``<dir>/versions/``::

    models/versions/20261201T112233Z_0.1710.pt     the weights
    models/versions/20261201T112233Z_0.1710.json   what they are: Dice, validation cases, where they came from

and those of another file in the same folder, ``<dir>/<stem>.pt``, in ``<dir>/versions_<stem>/``.

The name is the UTC time the version was kept and its validation mean Dice (``unscored`` when it was never
validated, e.g. weights that were served before the first retraining and are restored over). A version is
identified by its name (without ``.pt``); the served one is the version whose content (MD5) equals the served
file. Nothing here deletes a file.

Files are written through the bundle's ``scripts.io`` (a temporary name beside the target, renamed), so the
served file is always either the old or the new weights.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import shutil

from scripts.io import atomic_path, file_md5, write_json

VERSIONS = "versions"
_NAME = re.compile(r"^\d{8}T\d{6}Z_(\d+\.\d{4}|unscored)(-\d+)?$")


class VersionError(LookupError):
    """An unknown version name (the message lists the known ones)."""


def versions_dir(weights: str) -> str:
    """``<dir>/versions`` for ``<dir>/model.pt``, ``<dir>/versions_<stem>`` for any other ``<dir>/<stem>.pt`` (the
    student's ``models/student.pt`` sits beside ``models/model.pt``: their versions must not mix)."""
    stem = os.path.splitext(os.path.basename(weights))[0]
    folder = VERSIONS if stem == "model" else f"{VERSIONS}_{stem}"
    return os.path.join(os.path.dirname(os.path.abspath(weights)), folder)


def _copy(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def list_versions(weights: str) -> list[dict]:
    """The versions of ``weights``, oldest first: ``name``, ``dice`` (or None), ``file``, ``md5``, ``served``
    (its content is the served file's) and what its ``.json`` records."""
    folder = versions_dir(weights)
    if not os.path.isdir(folder):
        return []
    served = file_md5(weights) if os.path.isfile(weights) else None
    out = []
    for name in sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".pt") and _NAME.match(f[:-3])):
        path = os.path.join(folder, f"{name}.pt")
        info = {}
        if os.path.isfile(os.path.join(folder, f"{name}.json")):
            with open(os.path.join(folder, f"{name}.json")) as f:
                info = json.load(f)
        digest = file_md5(path)
        out.append({**info, "name": name, "file": path, "md5": digest, "served": digest == served})
    return out


def trained_on(weights: str) -> list[str]:
    """The labelled studies the served ``weights`` were trained on, as its version records them (``trained_on``,
    every retraining in its line of descent); [] for weights no retraining made (e.g. the shipped ones)."""
    for v in list_versions(weights):
        if v["served"]:
            return list(v.get("trained_on", []))
    return []


def _new_name(folder: str, dice: float | None) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    score = "unscored" if dice is None or not math.isfinite(dice) else f"{dice:.4f}"
    name, n = f"{stamp}_{score}", 1
    while os.path.exists(os.path.join(folder, f"{name}.pt")):
        n += 1
        name = f"{stamp}_{score}-{n}"
    return name


def keep(weights_file: str, served: str, dice: float | None, info: dict) -> dict:
    """Keep ``weights_file`` as a version of the served file ``served`` (unless a version with the same content
    exists): its copy and a ``.json`` with ``dice`` and ``info``. Returns the version (as in
    :func:`list_versions`)."""
    digest = file_md5(weights_file)
    for v in list_versions(served):
        if v["md5"] == digest:
            return v
    folder = versions_dir(served)
    name = _new_name(folder, dice)
    path = os.path.join(folder, f"{name}.pt")
    _copy(weights_file, path)
    record = {"dice": dice, "kept_at": datetime.datetime.now(datetime.timezone.utc).isoformat(), **info}
    write_json(record, os.path.join(folder, f"{name}.json"))
    return {**record, "name": name, "file": path, "md5": digest}


def serve(weights_file: str, served: str) -> None:
    """Replace the served file with a copy of ``weights_file``, atomically."""
    _copy(weights_file, served)


def restore(served: str, name: str) -> dict:
    """Serve version ``name`` again. The weights served until now are kept first (if no version holds them yet),
    so a restore can itself be undone. Returns the restored version."""
    known = {v["name"]: v for v in list_versions(served)}
    if name not in known:
        raise VersionError(f"no version {name!r} of {served}; versions: {sorted(known) or 'none'}")
    if os.path.isfile(served):
        keep(served, served, None, {"source": "served until a restore, never validated on its own"})
    serve(known[name]["file"], served)
    return {**known[name], "served": True}
