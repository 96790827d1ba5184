"""Start Orthanc (Debian packages ``orthanc`` and ``orthanc-dicomweb``) as a PACS for this machine only.

    python -m apps.pacs.orthanc --storage data/pacs --port 8042    # serves until Ctrl-C

writes ``<storage>/orthanc.json`` (the configuration: the storage folder, the HTTP port, the DICOMweb plugin at
``/dicom-web/``) and runs ``Orthanc <storage>/orthanc.json`` in the foreground. The DICOMweb root is then
``http://127.0.0.1:<port>/dicom-web`` (MONAI Label's ``--studies``), the REST API and Orthanc Explorer are at
``http://127.0.0.1:<port>/``.

Only this machine can talk to it: Orthanc 1.10 (Debian 12) cannot bind its HTTP server to one address, so the
configuration sets ``RemoteAccessAllowed: false`` (Orthanc answers every client that is not the local host with
HTTP 403), disables its DICOM (DIMSE) server, Lua scripts and REST writes to the file system, and needs no
password. :func:`running` starts the same server from Python (tests) and stops it afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from scripts.io import write_json

ORTHANC = "Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
INSTALL_HINT = "apt-get install -y orthanc orthanc-dicomweb"


def request(method: str, url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 60):
    """The body of an HTTP request's answer (``urllib.error.HTTPError`` / ``URLError`` on failure)."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def get_json(url: str, timeout: float = 60):
    return json.loads(request("GET", url, timeout=timeout))


def find_orthanc() -> tuple[str, str]:
    """(Orthanc executable, DICOMweb plugin); ``FileNotFoundError`` naming the packages to install."""
    exe = shutil.which(ORTHANC) or next((p for p in ("/usr/sbin/Orthanc",) if os.access(p, os.X_OK)), None)
    if exe is None or not os.path.isfile(DICOMWEB_PLUGIN):
        missing = "Orthanc" if exe is None else DICOMWEB_PLUGIN
        raise FileNotFoundError(f"{missing} not found: install Orthanc and its DICOMweb plugin ({INSTALL_HINT})")
    return exe, DICOMWEB_PLUGIN


def write_config(storage: str | os.PathLike, port: int, name: str = "RESUNET_PACS") -> Path:
    """Write ``<storage>/orthanc.json``: storage and index in ``storage/db``, HTTP on ``port`` for the local
    host only, DICOMweb at ``/dicom-web/``, no DICOM server; returns its path."""
    storage = Path(storage).resolve()
    _, plugin = find_orthanc()
    config = {
        "Name": name,
        "StorageDirectory": str(storage / "db"),
        "IndexDirectory": str(storage / "db"),
        "Plugins": [plugin],
        "HttpServerEnabled": True,
        "HttpPort": int(port),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "ExecuteLuaEnabled": False,
        "RestApiWriteToFileSystemEnabled": False,
        "WebDavEnabled": False,
        "SaveJobs": False,
        "StableAge": 2,
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 8,
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "Ssl": False,
            "StudiesMetadata": "Full",
        },
    }
    return Path(write_json(config, storage / "orthanc.json"))


def command(storage: str | os.PathLike, port: int) -> list[str]:
    """The ``Orthanc <config>`` command line (the configuration written first)."""
    exe, _ = find_orthanc()
    return [exe, str(write_config(storage, port))]


def wait_until_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 60) -> dict:
    """``GET <url>/system`` once Orthanc answers; ``RuntimeError`` when ``proc`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get_json(f"{url}/system", timeout=5)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with code {proc.returncode} before answering at {url}") from e
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not answer at {url} within {timeout:.0f} s") from e
            time.sleep(0.3)


class Orthanc:
    """Orthanc serving ``storage`` on ``http://127.0.0.1:<port>`` (``url``); :meth:`start` and :meth:`stop` may be
    called again (same storage, same port: the stored studies are kept). Output goes to ``<storage>/orthanc.log``."""

    def __init__(self, storage: str | os.PathLike, port: int):
        self.storage, self.port = Path(storage), int(port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.storage / "orthanc.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> str:
        self.storage.mkdir(parents=True, exist_ok=True)
        cmd = command(self.storage, self.port)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_ready(self.url, self.proc, timeout)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(
                f"{e}; its log {self.log_path}:\n{self.log_path.read_text(errors='replace')[-3000:]}"
            ) from None
        return self.url

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (Orthanc closes its index cleanly), SIGKILL after ``timeout`` seconds."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextlib.contextmanager
def running(storage: str | os.PathLike, port: int) -> Iterator[Orthanc]:
    """An :class:`Orthanc` started on ``port`` over ``storage``, stopped afterwards."""
    server = Orthanc(storage, port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", required=True, help="folder for the configuration, the index and the files")
    parser.add_argument("--port", type=int, default=8042, help="HTTP port (default 8042)")
    args = parser.parse_args(argv)
    try:
        cmd = command(args.storage, args.port)
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")
    print(f"Orthanc on http://127.0.0.1:{args.port}, DICOMweb http://127.0.0.1:{args.port}/dicom-web", flush=True)
    print(" ".join(cmd), flush=True)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
