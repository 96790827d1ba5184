#!/usr/bin/env python
"""The distilled student against its ResUNet teacher, in one run: parameters and whole-case CPU inference time.

Both networks are loaded with their weights from the bundle's configs (teacher: ``configs/inference.json`` +
``models/model.pt``; student: ``configs/inference.json`` + ``configs/student.json`` + ``models/student.pt``), one
real case is preprocessed as inference does, and the sliding-window inferer of the configs runs over the whole
case with each network on each backend (ONNX Runtime, the CPU default, and torch), repetitions interleaved so
that both see the same machine load; the median is reported::

    python benchmarks/bench_student.py --case ../shared/data/TCGA-DU-7294 --repeats 3 --output_md docs/benchmarks.md

With ``--output_md`` the "Student vs teacher" section of that page is replaced (other sections are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402

from scripts.export import load_network, preprocess_case  # noqa: E402
from scripts.inferers import inference_network  # noqa: E402

SECTION = "## Student vs teacher"


def _configs(*names: str) -> list[str]:
    return [os.path.join(REPO_ROOT, "configs", n) for n in names]


def time_case(image: torch.Tensor, networks: dict, inferer, repeats: int) -> dict[str, list[float]]:
    """Seconds of ``inferer(image, network)`` per network, repetitions interleaved (first call: warm-up, which
    includes the ONNX export)."""
    times: dict[str, list[float]] = {k: [] for k in networks}
    with torch.no_grad():
        for rep in range(repeats + 1):
            for key, net in networks.items():
                start = time.perf_counter()
                inferer(image, net)
                if rep:
                    times[key].append(time.perf_counter() - start)
    return times


def measure(args) -> dict:
    teacher_cfg = _configs("inference.json")
    student_cfg = _configs("inference.json", "student.json")
    teacher = load_network(teacher_cfg, args.teacher_ckpt)
    student = load_network(student_cfg, args.student_ckpt)
    image = preprocess_case(teacher_cfg, args.case)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(teacher_cfg)
    inferer = parser.get_parsed_content("sw_inferer")
    networks = {
        f"{name}/{backend}": inference_network(net, backend)
        for backend in ("onnxruntime", "torch")
        for name, net in (("teacher", teacher), ("student", student))
    }
    times = time_case(image, networks, inferer, args.repeats)
    medians = {k: statistics.median(v) for k, v in times.items()}
    params = {
        name: sum(p.numel() for p in net.parameters()) for name, net in (("teacher", teacher), ("student", student))
    }
    return {
        "case": os.path.basename(os.path.normpath(args.case)),
        "case_shape": list(image.shape[2:]),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "params": params,
        "params_ratio": params["teacher"] / params["student"],
        "seconds": times,
        "median_s": medians,
        "speedup": {b: medians[f"teacher/{b}"] / medians[f"student/{b}"] for b in ("onnxruntime", "torch")},
    }


def markdown(r: dict) -> str:
    rows = [
        f"| parameters | {r['params']['teacher']:,} | {r['params']['student']:,} | {r['params_ratio']:.1f}x fewer |",
    ]
    for b in ("onnxruntime", "torch"):
        t, s = r["median_s"][f"teacher/{b}"], r["median_s"][f"student/{b}"]
        rows.append(f"| whole case, {b} (s, median of {r['repeats']}) | {t:.2f} | {s:.2f} | {t / s:.2f}x faster |")
    return "\n".join(
        [
            SECTION,
            "",
            f"`benchmarks/bench_student.py`: sliding-window inference of the network over the whole preprocessed "
            f"{r['case']} case ({' x '.join(map(str, r['case_shape']))} voxels after brain cropping), "
            f"{r['threads']} torch threads, repetitions interleaved (same load for both networks).",
            "",
            "| | teacher (ResUNet) | student (StudentUNet) | ratio |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default=os.path.join(REPO_ROOT, "..", "shared", "data", "TCGA-DU-7294"))
    p.add_argument("--teacher_ckpt", default=os.path.join(REPO_ROOT, "models", "model.pt"))
    p.add_argument("--student_ckpt", default=os.path.join(REPO_ROOT, "models", "student.pt"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output_json", default=None)
    p.add_argument("--output_md", default=None, help="replace the section of this Markdown page")
    args = p.parse_args(argv)
    result = measure(args)
    print(json.dumps({k: v for k, v in result.items() if k != "seconds"}, indent=1))
    print(markdown(result))
    from scripts.io import replace_markdown_sections, write_json, write_text

    if args.output_json:
        write_json(result, args.output_json)
    if args.output_md:
        old = open(args.output_md).read() if os.path.exists(args.output_md) else ""
        write_text(replace_markdown_sections(old, markdown(result)), args.output_md)
    return result


if __name__ == "__main__":
    main()
