"""Make the MONAI Label server's environment and start the server with this bundle's app.

    python apps/server.py setup                      # make (or reuse) the server environment, print its path
    python apps/server.py start --studies DATASTORE  # start MONAI Label on 127.0.0.1:8000 serving this bundle

Why a separate environment: monailabel imports torchvision when the server starts, and PyPI's torchvision wheels
only load beside PyPI's own torch build (CUDA, which also runs on a CPU), while the bundle's main environment may
hold the CPU-only torch build; monailabel 0.8.5 also needs pydicom 2 where the bundle's DICOM SEG support needs
pydicom 3. The environment is made once from apps/requirements-server*.txt (pinned; the repository's
constraints.txt as PIP_CONSTRAINT) and reused while those files are unchanged. This repository is installed in it
as in development (``pip install --no-deps -e``), so the app imports ``scripts`` like any package; that install
is redone when the environment last got another checkout or another pyproject.toml. On a GPU workstation the same
command gives a server that runs on the GPU. ``--venv`` (or ``RESUNET_MONAILABEL_VENV``) chooses where it lives.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

APPS = Path(__file__).resolve().parent
ROOT = APPS.parent
APP_DIR = APPS / "resunet_brats"
REQUIREMENTS = APPS / "requirements-server.txt"
REQUIREMENTS_NODEPS = APPS / "requirements-server-nodeps.txt"  # installed with --no-deps after REQUIREMENTS
# Every file whose content decides what the environment holds.
PINNED_FILES = (REQUIREMENTS, REQUIREMENTS_NODEPS, ROOT / "requirements-core.txt", ROOT / "constraints.txt")
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "resunet-brats" / "monailabel-server"
STAMP = ".resunet-requirements.sha256"
BUNDLE_STAMP = ".resunet-bundle"  # the checkout installed in the environment (bundle_stamp())
# What the server imports at start: fails with a clear message in a broken environment.
IMPORT_CHECK = "import torch, torchvision.utils, monailabel, monai; print(torch.__version__, monailabel.__version__)"


def default_venv() -> Path:
    return Path(os.environ.get("RESUNET_MONAILABEL_VENV", DEFAULT_VENV))


def bin_dir(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts" if os.name == "nt" else "bin")


def requirements_digest() -> str:
    digest = hashlib.sha256()
    for path in PINNED_FILES:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def is_ready(venv_dir: Path) -> bool:
    """True when ``venv_dir`` was made from the current pinned files (and is still there)."""
    stamp = venv_dir / STAMP
    return (
        (bin_dir(venv_dir) / "python").exists()
        and stamp.is_file()
        and stamp.read_text().strip() == requirements_digest()
    )


def bundle_stamp() -> str:
    """What the environment's install of the bundle is made from: this checkout and its pyproject.toml."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return f"{ROOT}\n{digest}\n"


def has_bundle(venv_dir: Path) -> bool:
    """True when this checkout (as its pyproject.toml is now) is the bundle installed in ``venv_dir``."""
    stamp = venv_dir / BUNDLE_STAMP
    return stamp.is_file() and stamp.read_text() == bundle_stamp()


def setup(venv_dir: Path | None = None, quiet: bool = False) -> Path:
    """Make the server environment at ``venv_dir`` (default: :func:`default_venv`) unless it is up to date, and
    install this checkout in it (:func:`install_bundle`) unless it is installed.

    Raises:
        RuntimeError: an install or an import check failed; the message names the command and its output.
    """
    venv_dir = Path(venv_dir or default_venv())
    if not is_ready(venv_dir):
        _install_requirements(venv_dir, quiet)
    if not has_bundle(venv_dir):
        install_bundle(venv_dir, quiet)
    return venv_dir


def _pip(venv_dir: Path, quiet: bool) -> tuple[list[str], dict[str, str]]:
    """The environment's ``pip install`` command and its process environment."""
    python = str(bin_dir(venv_dir) / "python")
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", *(["-q"] if quiet else [])]
    # PIP_CONSTRAINT also reaches pip's isolated build environments, so no source build pulls another torch.
    return pip, dict(os.environ, PIP_CONSTRAINT=str(ROOT / "constraints.txt"))


def _install_requirements(venv_dir: Path, quiet: bool) -> None:
    """Create the environment (if needed) and install the pinned requirements in it."""
    (venv_dir / STAMP).unlink(missing_ok=True)  # a half-made environment is never taken for a ready one
    if not (bin_dir(venv_dir) / "python").exists():
        print(f"creating the MONAI Label server environment in {venv_dir}", flush=True)
        venv.EnvBuilder(with_pip=True).create(venv_dir)
    python = str(bin_dir(venv_dir) / "python")
    pip, env = _pip(venv_dir, quiet)
    _check([*pip, "-r", str(REQUIREMENTS)], "installing apps/requirements-server.txt", env, quiet)
    _check(
        [*pip, "--no-deps", "-r", str(REQUIREMENTS_NODEPS)],
        "installing apps/requirements-server-nodeps.txt",
        env,
        quiet,
    )
    _check([python, "-c", IMPORT_CHECK], "importing torch, torchvision and monailabel", env, quiet)
    _write_stamp(venv_dir / STAMP, requirements_digest() + "\n")


def install_bundle(venv_dir: Path, quiet: bool = False) -> None:
    """``pip install --no-deps -e`` this checkout in the environment (its dependencies are the pinned ones), then
    check that ``import scripts`` there is this checkout's, from another folder.

    Raises:
        RuntimeError: the install or the check failed; the message names the command and its output.
    """
    (venv_dir / BUNDLE_STAMP).unlink(missing_ok=True)
    python = str(bin_dir(venv_dir) / "python")
    pip, env = _pip(venv_dir, quiet)
    _check([*pip, "--no-deps", "-e", str(ROOT)], f"installing the bundle {ROOT}", env, quiet)
    expected = str(ROOT / "scripts" / "__init__.py")
    check = f"import os, scripts; assert os.path.realpath(scripts.__file__) == {expected!r}, scripts.__file__"
    _check([python, "-c", check], f"importing scripts from {ROOT}", env, quiet, cwd=venv_dir)
    _write_stamp(venv_dir / BUNDLE_STAMP, bundle_stamp())


def _write_stamp(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check(cmd: list[str], what: str, env: dict[str, str], quiet: bool, cwd: Path | None = None) -> None:
    """Run ``cmd``; its output streams to the terminal (pip's progress bars), or is kept for the error if ``quiet``."""
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd
    )
    if proc.returncode != 0:
        output = f"\n{proc.stdout[-4000:]}" if quiet else " (its output is above)"
        raise RuntimeError(
            f"MONAI Label server environment: {what} failed (exit {proc.returncode}): {' '.join(cmd)}{output}"
        )


def server_command(
    venv_dir: Path, studies: str, host: str, port: int, conf: list[tuple[str, str]], app_dir: Path = APP_DIR
) -> list[str]:
    """The ``monailabel start_server`` command line serving ``app_dir`` (default: this bundle's app, which reads
    the bundle at ``--conf bundle_path``) over ``studies``."""
    confs = {"bundle_path": str(ROOT), **dict(conf)} if Path(app_dir) == APP_DIR else dict(conf)
    cmd = [
        str(bin_dir(venv_dir) / "monailabel"),
        "start_server",
        "--app",
        str(app_dir),
        "--studies",
        studies,
        "--host",
        host,
        "--port",
        str(port),
    ]
    for key, value in confs.items():
        cmd += ["--conf", key, value]
    return cmd


def stock_app(venv_dir: Path) -> Path:
    """MONAI Label's own ``monaibundle`` sample app as the server environment's monailabel package ships it."""
    return venv_dir / "monailabel" / "sample-apps" / "monaibundle"


def server_env(venv_dir: Path) -> dict[str, str]:
    """The environment for the server: its ``bin`` first on PATH (the ``monailabel`` launcher and the training
    subprocesses it starts run ``python`` from PATH), no PYTHONPATH of the main environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(bin_dir(venv_dir)), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(venv_dir)
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("setup", "start"):
        p = sub.add_parser(name)
        p.add_argument("--venv", type=Path, default=None, help=f"server environment (default: {default_venv()})")
    start = sub.choices["start"]
    start.add_argument("--studies", required=True, help="datastore folder (docs/monailabel.md) or a DICOMweb URL")
    start.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    start.add_argument("--port", type=int, default=8000)
    start.add_argument(
        "--conf",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="app option, e.g. --conf models resunet_brats --conf max_epochs 10",
    )
    args = parser.parse_args(argv)
    try:
        venv_dir = setup(args.venv)
    except RuntimeError as e:
        sys.exit(str(e))
    if args.command == "setup":
        print(venv_dir)
        return
    if "://" not in args.studies and not os.path.isdir(args.studies):
        sys.exit(f"--studies {args.studies}: no such folder")
    cmd = server_command(
        venv_dir,
        os.path.abspath(args.studies) if "://" not in args.studies else args.studies,
        args.host,
        args.port,
        args.conf,
    )
    print(" ".join(cmd), flush=True)
    os.execve(cmd[0], cmd, server_env(venv_dir))


if __name__ == "__main__":
    main()
