"""Stress check, run by hand or in CI (not collected by pytest): the 1-epoch training, single-process and
2-process (``torchrun`` with the multi-GPU config; gloo on a CPU), ``--runs`` times in a row, each expected to
exit 0 and leave ``model.pt``. Prints one line per run and exits 1 if any run failed::

    python -m tests.stress_training --runs 10 [--modes single,multi] [--work /tmp/stress]

The tiny settings of the tests (``tests/_bundle.py``) on 6 synthetic cases written once into ``--work``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

from scripts.synthetic.phantom import write_dataset
from tests._bundle import ROOT, command


def run_once(mode: str, work: Path, index: int) -> tuple[bool, str]:
    bundle_root = work / f"{mode}_{index}"
    cmd = command(mode, bundle_root, work / "data")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    log = proc.stdout + proc.stderr
    (work / f"{mode}_{index}.log").write_text(log)
    ok = (
        proc.returncode == 0
        and (bundle_root / "runs" / "train" / "model.pt").is_file()
        and "terminate called" not in log
    )
    return (
        ok,
        f"{mode} run {index}: exit {proc.returncode}, {time.monotonic() - start:.0f} s, {'ok' if ok else 'FAILED'}",
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--modes", default="single,multi")
    parser.add_argument("--work", default="/tmp/stress_training")
    args = parser.parse_args(argv)
    work = Path(args.work)
    if not (work / "data").is_dir():
        write_dataset(work / "data", num_cases=6, seed=3, shape=(48, 56, 40), progress=False)
    failed = 0
    for mode in args.modes.split(","):
        for i in range(args.runs):
            ok, line = run_once(mode, work, i)
            failed += not ok
            print(line, flush=True)
    print(f"{failed} failed run(s); logs in {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
