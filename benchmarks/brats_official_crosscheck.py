"""Cross-check of the bundle's metrics against the official BraTS evaluation (``brats-evaluation`` on PyPI,
built on panoptica) on the real case in ``../shared/data``: its five BraTS 2020 algorithm outputs against the
consensus segmentation.

The official package pins numpy < 2.3 while the bundle pins numpy 2.4.6, so it runs in its own virtual
environment (``--venv``, default ``~/.cache/resunet-brats/brats-eval-venv``), made with
``benchmarks/requirements-brats-eval.txt`` on the first run and reused after. Both sides read the same NIfTI
files; the label maps are written in BraTS 2023 values (enhancing 4 -> 3) for the official ``gli`` config.

    python -m benchmarks.brats_official_crosscheck [--write_docs]

prints the comparison table (global Dice and HD95, lesion-wise PQ, Dice, HD95 and counts per region) and, with
``--write_docs``, puts it in the "Official BraTS metrics" section of docs/clinical.md. Exit code 1 when a
difference exceeds the tolerances (Dice 1e-3, HD95 0.05 mm; lesion counts exact).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmarks.markdown import replace_markdown_sections
from scripts.evaluation import evaluate_case
from scripts.io import write_text

ROOT = Path(__file__).resolve().parents[1]


REAL_CASE = ROOT.parent / "shared" / "data" / "TCGA-DU-7294"
DEFAULT_VENV = Path(os.environ.get("BRATS_EVAL_VENV", Path.home() / ".cache" / "resunet-brats" / "brats-eval-venv"))
REQUIREMENTS = ROOT / "benchmarks" / "requirements-brats-eval.txt"
WORKER = ROOT / "benchmarks" / "_official_eval_worker.py"
TOLERANCE = {"dice": 1e-3, "hd95": 0.05}
# (official key, bundle column prefix, tolerance kind); counts must match exactly
COMPARED = (
    ("global_bin_dsc", "dice", "dice"),
    ("global_bin_hd95", "hd95", "hd95"),
    ("pq_dsc", "pq_dsc", "dice"),
    ("sq_dsc", "sq_dsc", "dice"),
    ("sq_hd95", "sq_hd95", "hd95"),
    ("tp", "tp", "count"),
    ("fp", "fp", "count"),
    ("fn", "fn", "count"),
)


def venv_python(path: Path = DEFAULT_VENV) -> Path:
    return Path(path) / "bin" / "python"


def official_available(path: Path = DEFAULT_VENV) -> bool:
    """Whether the virtual environment at ``path`` imports the official package."""
    py = venv_python(path)
    if not py.is_file():
        return False
    return subprocess.run([str(py), "-c", "import brats_evaluation"], capture_output=True).returncode == 0


def ensure_venv(path: Path = DEFAULT_VENV) -> Path:
    """Make the official package's virtual environment at ``path`` unless it already works; its python."""
    if not official_available(path):
        print(f"creating {path} and installing {REQUIREMENTS.name} (once) ...", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
        pip = [str(venv_python(path)), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)]
        subprocess.run(pip, check=True)
    return venv_python(path)


def _to_brats2023(src: Path, dst: Path) -> str:
    """``src`` label map rewritten with enhancing 4 -> 3 (the official glioma config's values)."""
    img = nib.load(str(src))
    data = np.asarray(img.dataobj).astype(np.uint8)
    data[data == 4] = 3
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(dst))
    return str(dst)


def official_metrics(pairs: list[dict], python: Path) -> dict:
    """``{name: {region: {official key: value}}}`` from the official package for BraTS 2020 label-map pairs."""
    with tempfile.TemporaryDirectory() as tmp:
        converted = []
        for i, p in enumerate(pairs):
            pred = _to_brats2023(Path(p["pred"]), Path(tmp) / f"pred{i}.nii.gz")
            ref = _to_brats2023(Path(p["ref"]), Path(tmp) / f"ref{i}.nii.gz")
            converted.append({"name": p["name"], "pred": pred, "ref": ref})
        (Path(tmp) / "pairs.json").write_text(json.dumps(converted))
        proc = subprocess.run(
            [str(python), str(WORKER), str(Path(tmp) / "pairs.json")], capture_output=True, text=True, check=False
        )
    if proc.returncode:
        raise RuntimeError(f"official evaluation failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _value(v) -> float:
    return float(v) if not isinstance(v, str) else float(v.replace("Infinity", "inf"))


def compare(pairs: list[dict], official: dict) -> list[dict]:
    """One row per (pair, region, metric): official value, bundle value (``empty="nan"``, the official edge
    cases), absolute difference and whether it is within tolerance. Both undefined (NaN, or infinite HD95 in
    both) counts as agreement."""
    rows = []
    for p in pairs:
        ours = evaluate_case(p["pred"], p["ref"], labels=(1, 2, 4), empty="nan")
        for region in ("ET", "TC", "WT"):
            for key, column, kind in COMPARED:
                theirs = _value(official[p["name"]][region.lower()][key])
                mine = float(ours[f"{column}_{region}"])
                if key == "global_bin_hd95" and math.isinf(theirs) and math.isnan(mine):
                    mine = theirs  # no overlap: the official infinity, NaN in the bundle's nan convention
                if key == "sq_hd95" and math.isinf(theirs) and math.isnan(mine):
                    mine = theirs
                both_undefined = (math.isnan(theirs) and math.isnan(mine)) or (theirs == mine)
                diff = 0.0 if both_undefined else abs(theirs - mine)
                tol = 0.0 if kind == "count" else TOLERANCE[kind]
                ok = both_undefined or diff <= tol
                rows.append({"case": p["name"], "region": region, "metric": key, "official": theirs,
                             "bundle": mine, "diff": diff, "ok": ok})  # fmt: skip
    return rows


def real_case_pairs(case_dir: Path = REAL_CASE) -> list[dict]:
    ref = case_dir / f"{case_dir.name}_seg_consensus.nii.gz"
    return [{"name": p.name.removesuffix(".nii.gz"), "pred": str(p), "ref": str(ref)}
            for p in sorted((case_dir / "algorithms").glob("*.nii.gz"))]  # fmt: skip


def markdown(rows: list[dict], python: Path) -> str:
    """The docs section: per metric, the largest absolute difference over the cases and regions, and the table
    of Dice and HD95 per algorithm and region."""
    version = subprocess.run([str(python), "-m", "pip", "show", "brats-evaluation", "panoptica"],
                             capture_output=True, text=True).stdout  # fmt: skip
    versions = ", ".join(line.split(": ")[1] for line in version.splitlines() if line.startswith(("Name", "Version")))
    lines = ["## Official BraTS metrics: cross-check", "",
             f"`python -m benchmarks.brats_official_crosscheck --write_docs`: the bundle's `scripts.evaluation` against "
             f"the official package ({versions}, glioma config, its own virtual environment) on the five BraTS 2020 "
             "algorithm outputs of TCGA-DU-7294 against the consensus (`../shared/data`). The consensus has no "
             "enhancing tumour, so ET is an edge case for every algorithm (empty reference).", "",
             "| metric | compared | largest difference | tolerance | all within |", "|---|---:|---:|---:|---|"]  # fmt: skip
    for key, _, kind in COMPARED:
        sel = [r for r in rows if r["metric"] == key]
        tol = "exact" if kind == "count" else f"{TOLERANCE[kind]:g}"
        lines.append(f"| `{key}` | {len(sel)} | {max(r['diff'] for r in sel):.2e} | {tol} | "
                     f"{'yes' if all(r['ok'] for r in sel) else 'NO'} |")  # fmt: skip
    lines += ["", "| algorithm | region | Dice official / bundle | HD95 (mm) official / bundle | "
              "lesion-wise PQ official / bundle |", "|---|---|---|---|---|"]  # fmt: skip
    table = {(r["case"], r["region"], r["metric"]): r for r in rows}
    for case in sorted({r["case"] for r in rows}):
        for region in ("TC", "WT", "ET"):
            cells = [f"{table[case, region, k]['official']:.4f} / {table[case, region, k]['bundle']:.4f}"
                     for k in ("global_bin_dsc", "global_bin_hd95", "pq_dsc")]  # fmt: skip
            lines.append(f"| {case} | {region} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the official package's environment")
    parser.add_argument("--case_dir", type=Path, default=REAL_CASE)
    parser.add_argument("--write_docs", action="store_true", help="write the section into docs/clinical.md")
    parser.add_argument("--setup_only", action="store_true", help="only make the environment (CI)")
    args = parser.parse_args(argv)
    python = ensure_venv(args.venv)
    if args.setup_only:
        return 0
    pairs = real_case_pairs(args.case_dir)
    rows = compare(pairs, official_metrics(pairs, python))
    text = markdown(rows, python)
    print(text)
    if args.write_docs:
        doc = ROOT / "docs" / "clinical.md"
        old = doc.read_text() if doc.is_file() else "# Clinical validation\n\n"
        write_text(replace_markdown_sections(old, text), doc)
    bad = [r for r in rows if not r["ok"]]
    for r in bad:
        print(f"OUT OF TOLERANCE: {r}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
