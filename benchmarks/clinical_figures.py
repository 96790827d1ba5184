"""Measurements of docs/clinical.md with the shipped weights: the per-case report on the real case (time per case,
Grad-CAM and segmentation figures, the model-randomisation sanity test) and the robustness curves on the real
case and on held-out synthetic cases.

    python -m benchmarks.clinical_figures [--ckpt_path models/model.pt] [--num_synthetic 3] [--skip_robustness | --skip_report]

Runs the bundle workflows as a user does (``python -m monai.bundle run report|robustness`` with
``configs/inference.json``), reads their outputs and writes the sections "Per-case report", "Grad-CAM on the
real case", "Robustness: real case" and "Robustness: synthetic cases" of docs/clinical.md (other sections are
kept) and the figures under docs/images/. Synthetic cases come from the bundle's generator
(:mod:`scripts.synthetic.generator`) with a seed the training does not use. Extra bundle overrides (e.g. the
network widths of other weights) follow ``--``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.markdown import replace_markdown_sections
from scripts.io import write_text

ROOT = Path(__file__).resolve().parents[1]


REAL_CASE = ROOT.parent / "shared" / "data" / "TCGA-DU-7294"
DOC = ROOT / "docs" / "clinical.md"
IMAGES = ROOT / "docs" / "images"


def bundle(run_id: str, overlay: str, *args: str, overlays=()) -> tuple[subprocess.CompletedProcess, float]:
    """Run a workflow of ``inference.json`` + ``configs/<overlay>`` (+ the config files ``overlays``); (process,
    wall seconds)."""
    configs = str([str(ROOT / "configs" / name) for name in ("inference.json", overlay, *overlays)])
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--meta_file", str(ROOT / "configs" / "metadata.json"),
           "--config_file", configs, *args]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{run_id} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc, time.perf_counter() - start


def page_images(html: str) -> dict[str, bytes]:
    """{alt: PNG bytes} of the figures embedded in a report page."""
    found = re.findall(r"<img alt='([^']+)' src='data:image/png;base64,([^']+)'>", html)
    return {alt: base64.b64decode(data) for alt, data in found}


def report_section(out: Path, sanity: dict) -> str:
    """The figures and metrics of the real case's report (its time and memory: clinical.md, "Per-case report: time
    and memory", measured on quiet cores)."""
    html = (out / "TCGA-DU-7294" / "report.html").read_text()
    for alt, png in page_images(html).items():
        (IMAGES / f"clinical_{alt}_TCGA-DU-7294.png").write_bytes(png)
    metrics = re.search(r"<h2>Metrics against.*?</table>", html, re.S)
    sanity_text = ", ".join(f"{r} {v:.2f}" for r, v in sanity.items())
    return (
        "## Grad-CAM on the real case\n\n"
        "![segmentation](images/clinical_segmentation_TCGA-DU-7294.png)\n\n"
        "![Grad-CAM](images/clinical_gradcam_TCGA-DU-7294.png)\n\n"
        "![uncertainty](images/clinical_uncertainty_TCGA-DU-7294.png)\n\n"
        f"Model-randomisation sanity test (Spearman correlation of the maps with those of re-initialised "
        f"weights; near 1 would mean the maps ignore the weights): {sanity_text}.\n\n"
        + (_html_table_to_markdown(metrics.group(0)) if metrics else "")
    )


def _html_table_to_markdown(html: str) -> str:
    """The report's metrics heading and table as markdown."""
    title = re.search(r"<h2>(.*?)</h2>", html).group(1)
    rows = [re.findall(r"<t[hd]>(.*?)</t[hd]>", r) for r in re.findall(r"<tr>(.*?)</tr>", html)]
    lines = [f"{title} (the five-algorithm consensus, not an expert annotation):", "", "| " + " | ".join(rows[0]) + " |",
             "|" + "---|" * len(rows[0])]  # fmt: skip
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]]) + "\n"


def robustness_section(title: str, out: Path, image: str, wall: float) -> str:
    (IMAGES / image).write_bytes((out / "robustness.png").read_bytes())
    table = (out / "robustness.md").read_text().split("\n", 2)[2]
    with open(out / "robustness.csv") as f:
        n = len({r["case_id"] for r in csv.DictReader(f)})
    return f"## {title}\n\n{n} case(s), {wall / 60:.1f} min.\n\n![{title}](images/{image})\n\n{table}\n"


def sanity_check(ckpt: str, overrides: list[str]) -> dict:
    """Adebayo's randomisation test on the real case, preprocessed by the inference config."""
    from scripts.casework import load_network, parse_configs
    from scripts.explain import randomisation_check

    values = {
        k.lstrip("-"): eval(v) if v[:1] in "[{(0123456789" else v for k, v in zip(overrides[::2], overrides[1::2])
    }  # noqa: S307
    values["device"] = "cpu"
    config = str(ROOT / "configs" / "inference.json")
    parser = parse_configs(config, values)
    net = load_network(config, ckpt, "cpu", values)
    files = [str(REAL_CASE / f"TCGA-DU-7294_{m}.nii.gz") for m in ("t1", "t1ce", "t2", "flair")]
    image = parser.get_parsed_content("preprocessing")({"image": files})["image"]
    return randomisation_check(net, image[None])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", default=str(ROOT / "models" / "model.pt"))
    parser.add_argument("--num_synthetic", type=int, default=3)
    parser.add_argument("--skip_robustness", action="store_true")
    parser.add_argument("--skip_report", action="store_true", help="robustness only (keeps the report sections)")
    parser.add_argument("--doc", type=Path, default=DOC, help="markdown page to update (figures: its images/)")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    common = ["--ckpt_path", args.ckpt_path, "--device", "cpu", "--num_workers", "0", *extra]
    global IMAGES
    IMAGES = args.doc.parent / "images"
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sections = []
        if not args.skip_report:
            bundle("report", "report.json", "--dataset_dir", str(REAL_CASE), "--output_dir", str(tmp / "r"), *common)
            sections.append(report_section(tmp / "r", sanity_check(args.ckpt_path, extra)))
        if not args.skip_robustness:
            sections += robustness_sections(tmp, common, args.num_synthetic)
    old = args.doc.read_text() if args.doc.is_file() else "# Clinical validation\n\n"
    write_text(replace_markdown_sections(old, "\n".join(sections)), args.doc)
    print("\n".join(sections))


def robustness_sections(tmp: Path, common: list[str], num_synthetic: int) -> list[str]:
    from scripts.synthetic.generator import write_dataset

    _, wall = bundle("robustness", "robustness.json", "--dataset_dir", str(REAL_CASE), "--output_dir",
                     str(tmp / "real"), *common)  # fmt: skip
    out = [robustness_section("Robustness: real case", tmp / "real", "clinical_robustness_real.png", wall)]
    write_dataset(str(tmp / "synthetic"), num_synthetic, seed=9001)
    _, wall = bundle("robustness", "robustness.json", "--dataset_dir", str(tmp / "synthetic"), "--output_dir",
                     str(tmp / "syn"), *common)  # fmt: skip
    out.append(
        robustness_section("Robustness: synthetic cases", tmp / "syn", "clinical_robustness_synthetic.png", wall)
    )
    return out


if __name__ == "__main__":
    main()
