"""The bundle's inference command end to end, as a user runs it: one case with the ResUNet and with the student, a
20-case batch, TTA against one pass, and where the time of one case goes.

Every timing is a real subprocess of ``python -m monai.bundle run --config_file configs/inference.json ...`` on the
bundled real case (``examples/TCGA-DU-7294``; the batch is 20 symlinked copies of it under new case ids, in a
temporary folder). The ONNX cache goes to a temporary ``XDG_CACHE_HOME``: each network's first run exports
(``cold``), the next ones read the cache (``warm``). The stages come from:

- imports: ``python -X importtime -c "import monai"`` (and with mlflow, nilearn, scikit-learn and pandas hidden, as
  when the optional ``requirements-tracking.txt`` and ``requirements-synthetic.txt`` are not installed), against
  ``import torch``;
- the command's own log: start -> input summary (imports, argument parsing), -> engine start (config parsing,
  building the components, loading the weights), the per-case progress line (data wait, network,
  post-processing with writing), -> exit;
- a stage worker (``--stages``, a subprocess) that runs the same configured transforms one by one on the case:
  loading (NIfTI decompression), orientation, resampling, cropping, normalisation, histogram equalisation, the
  network (ONNX export or cache, then warm), each post-processing step and the writing.

One command, a few minutes on 2 quiet cores; the figures replace the "End to end" section of docs/benchmarks.md
and go to ``benchmarks/results/end_to_end.json``::

    python -m benchmarks.bench_end_to_end --output_md docs/benchmarks.md

``--plain_python`` adds one case per network run by another interpreter: a virtual environment with only what the
README's first command installs, i.e. what a user who installs the bundle to segment pays (the test requirements
add mlflow and IPython, which ``import monai`` imports when it finds them)::

    python -m venv /tmp/plain && /tmp/plain/bin/pip install torch==2.13.0 \
        && /tmp/plain/bin/pip install -c constraints.txt -r requirements.txt
    python -m benchmarks.bench_end_to_end --plain_python /tmp/plain/bin/python --output_md docs/benchmarks.md

``--device cuda`` runs the same on a GPU (torch backend with mixed precision) and adds the network's whole volumes
per second; the docs keep "not measured" for the GPU until it is run there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from benchmarks.markdown import replace_markdown_sections
from scripts.conventions import MODALITIES
from scripts.io import write_json, write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
CASE = REPO_ROOT / "examples" / "TCGA-DU-7294"
SECTION = "## End to end: the inference command"
TTA_SECTION = "## End to end: TTA flips per network call"
STUDENT = ["configs/inference.json", "configs/student.json"]
RESUNET = ["configs/inference.json"]
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
_PROGRESS = re.compile(
    r"\[(\d+)/\d+\] (\S+): (.+?) \(data ([\d.]+) s, network ([\d.]+) s, post-processing ([\d.]+) s\)"
)


def parse_seconds(text: str) -> float:
    """``4.1 s``, ``2 min 05 s``, ``1 h 02 min`` (``scripts.handlers.format_seconds``) in seconds."""
    units = {"h": 3600, "min": 60, "s": 1}
    return sum(float(v) * units[u] for v, u in re.findall(r"([\d.]+) (h|min|s)\b", text))


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def machine() -> dict:
    """CPU, cores and the load average when the run started (the timings depend on it)."""
    model = ""
    if os.path.exists("/proc/cpuinfo"):
        model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "date": datetime.now().isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------------------------------- imports
def import_seconds(statement: str, hide: tuple[str, ...] = (), python: str = sys.executable) -> dict:
    """Wall time of ``statement`` in a fresh interpreter (``python``) and, from ``-X importtime``, the cumulative
    seconds of the top-level packages it imported (largest first); ``hide`` makes those packages not importable (as
    if not installed)."""
    code = "".join(f"import sys; sys.modules[{m!r}] = None; " for m in hide) + statement
    start = time.perf_counter()
    done = subprocess.run([python, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    tops: dict[str, float] = {}
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| *(\S+)", line)
        if m:  # the first import of each top-level package, at any depth: its cumulative time
            root = m.group(2).split(".")[0]
            tops[root] = max(tops.get(root, 0.0), int(m.group(1)) / 1e6)
    top = {k: round(v, 2) for k, v in sorted(tops.items(), key=lambda kv: -kv[1]) if v >= 0.05}
    top = dict(list(top.items())[:10])
    return {"statement": statement, "hidden": list(hide), "wall_s": round(wall, 2), "top_s": top}


def imports(plain_python: str | None = None) -> dict:
    plain = {"monai_plain_install": import_seconds("import monai", python=plain_python)} if plain_python else {}
    return {
        "torch": import_seconds("import torch"),
        "monai": import_seconds("import monai"),
        # the optional extras (requirements-tracking.txt, requirements-synthetic.txt) and what only they bring
        "monai_without_extras": import_seconds("import monai", hide=("mlflow", "nilearn", "sklearn", "pandas")),
        "monai_bundle_and_scripts": import_seconds("import monai.bundle, scripts"),
        **plain,
    }


# ----------------------------------------------------------------------------------------------------- command
def make_batch(folder: Path, n: int) -> Path:
    """``n`` cases ``case_01``... under ``folder``, each a set of symlinks to the example case's four files."""
    for i in range(1, n + 1):
        case = folder / f"case_{i:02d}"
        case.mkdir(parents=True, exist_ok=True)
        for m in MODALITIES:
            link = case / f"case_{i:02d}_{m}.nii.gz"
            if not link.exists():
                link.symlink_to(CASE / f"{CASE.name}_{m}.nii.gz")
    return folder


def _stamp(line: str) -> float | None:
    m = _STAMP.match(line)
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if m else None


def parse_log(text: str, started: float, ended: float) -> dict:
    """The command's stages from its log timestamps and progress lines."""
    summary = engine = finished = None
    cases = []
    for line in text.splitlines():
        t = _stamp(line)
        if t is None:
            continue
        if "input summary" in line and summary is None:
            summary = t
        elif "Engine run resuming" in line:
            engine = t
        elif "Engine run finished" in line:
            finished = t
        m = _PROGRESS.search(line)
        if m:
            cases.append({"case": m.group(2), "case_s": parse_seconds(m.group(3)), "data_s": float(m.group(4))})
            cases[-1] |= {"network_s": float(m.group(5)), "post_s": float(m.group(6))}
    if summary is None or engine is None or finished is None:
        raise RuntimeError(f"unexpected log of the inference command:\n{text[-3000:]}")
    return {
        "imports_and_arguments_s": round(summary - started, 2),
        "config_build_and_weights_s": round(engine - summary, 2),
        "engine_s": round(finished - engine, 2),
        "exit_s": round(ended - finished, 2),
        "cases": cases,
    }


def run_inference(
    configs: list[str], dataset: Path, out: Path, cache: Path, *overrides: str, device: str = "cpu", python: str = ""
):
    """Run the inference command once with ``python`` (default: this interpreter); returns its wall time and stages
    (:func:`parse_log`)."""
    cmd = [python or sys.executable, "-m", "monai.bundle", "run", "--meta_file", "configs/metadata.json"]
    cmd += ["--config_file", json.dumps(configs), "--dataset_dir", str(dataset), "--output_dir", str(out)]
    cmd += ["--device", device] if device != "cpu" else []
    cmd += list(overrides)
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    ended = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    result = {"wall_s": round(ended - started, 2), "cpu_s": round(cpu, 2)}
    result |= parse_log(done.stdout + done.stderr, started, ended)
    net = sum(c["network_s"] for c in result["cases"])
    where = f" [{python}]" if python else ""
    log(
        f"  {' + '.join(Path(c).stem for c in configs)} {' '.join(overrides)}{where}: {result['wall_s']} s "
        f"(network {net:.1f} s)"
    )
    return result


# ------------------------------------------------------------------------------------------- stage worker
def _timed(times: dict, name: str, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    times[name] = round(times.get(name, 0.0) + time.perf_counter() - start, 3)
    return out


def stage_worker(configs: list[str], case: str, out_dir: str, ckpt: str, device: str, overrides: dict) -> dict:
    """Seconds of each configured step on ``case`` in this process (``overrides``: config ids, e.g. ``tta``), and
    the process's peak resident memory."""
    import torch
    from monai.data import decollate_batch, list_data_collate

    import scripts  # what the configs' "$import scripts" does (imports are measured apart, see imports())

    times: dict[str, float] = {}
    parser = _timed(times, "reading the configs", _parse, configs, case, out_dir, ckpt, device, overrides)
    network = _timed(times, "building the network", parser.get_parsed_content, "network")
    _timed(times, "loading the weights", scripts.casework.load_weights, network, ckpt, device)
    item = parser.get_parsed_content("datalist")[0]
    for t in parser.get_parsed_content("preprocessing_transforms"):
        name = "loading (NIfTI read)" if type(t).__name__ == "LoadImageSharedGridd" else type(t).__name__
        item = _timed(times, name, t, item)
    batch = list_data_collate([item])
    image = batch["image"].to(device)
    net, inferer = parser.get_parsed_content("inference_network"), parser.get_parsed_content("inferer")
    with torch.no_grad():
        _timed(times, "network, first call (ONNX export or cache)", inferer, image, net)
        pred = _timed(times, "network", inferer, image, net)
    data = decollate_batch({**batch, "pred": pred.cpu()})[0]
    for key in parser.get("postprocessing")["transforms"]:
        name = re.split("#|::", key)[-1]
        data = _timed(times, "writing" if name == "save" else f"post: {name}", parser.get_parsed_content(key[1:]), data)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"shape": list(image.shape[2:]), "overrides": overrides, "stages_s": times, "peak_rss_mb": round(peak_mb)}


def _parse(configs: list[str], case: str, out_dir: str, ckpt: str, device: str, overrides: dict):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / c) for c in configs])
    parser.update({"bundle_root": str(REPO_ROOT), "dataset_dir": case, "output_dir": out_dir, "ckpt_path": ckpt})
    parser.update({"device": device, **overrides})
    parser.parse()
    return parser


def stages(configs: list[str], out: Path, cache: Path, device: str, overrides: dict | None = None) -> dict:
    ckpt = str(REPO_ROOT / "models" / ("student.pt" if configs == STUDENT else "model.pt"))
    cmd = [sys.executable, "-m", "benchmarks.bench_end_to_end", "--stages", json.dumps(configs), "--device", device]
    cmd += ["--case", str(CASE), "--work", str(out), "--ckpt", ckpt, "--overrides", json.dumps(overrides or {})]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=dict(os.environ, XDG_CACHE_HOME=str(cache)), capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode()[-3000:])
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def tta_compare(args) -> dict:
    """TTA network time and peak memory of one case for each ``--tta_compare`` flips-per-call value, each in a
    fresh stage worker (the export cached by a first worker)."""
    configs = STUDENT if args.network == "student" else RESUNET
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench_tta_") as tmp:
        stages(configs, Path(tmp) / "warm-up", Path(tmp) / "cache", args.device)
        for k in [int(v) for v in args.tta_compare.split(",")]:
            run = stages(
                configs, Path(tmp) / f"k{k}", Path(tmp) / "cache", args.device, {"tta": True, "tta_flips_per_call": k}
            )
            out[k] = {"tta_network_s": run["stages_s"]["network"], "peak_rss_mb": run["peak_rss_mb"]}
            log(f"  flips per call {k}: {out[k]}")
    return {"network": args.network, "machine": machine(), "flips_per_call": out}


def tta_markdown(result: dict) -> str:
    m = result["machine"]
    rows = [f"| {k} | {v['tta_network_s']:.1f} | {v['peak_rss_mb']} |" for k, v in result["flips_per_call"].items()]
    return "\n".join(
        [
            TTA_SECTION,
            "",
            f"`python -m benchmarks.bench_end_to_end --tta_compare {','.join(map(str, result['flips_per_call']))} "
            f"--network {result['network']}` ({m['date']}, {m['cores']} cores, load average "
            f"{m['load_average_1_5_15']}): the 8 flips of one case through the {result['network']}, "
            "`tta_flips_per_call` at a time, each setting in a fresh process (ONNX export cached).",
            "",
            "| flips per call | TTA network time (s) | peak memory of the process (MB) |",
            "|---|---|---|",
            *rows,
            "",
        ]
    )


# ------------------------------------------------------------------------------------------------ the whole run
def measure(args) -> dict:
    result = {
        "machine": machine(),
        "device": args.device,
        "command": " ".join(["python -m benchmarks.bench_end_to_end", *sys.argv[1:]]),
    }
    log(f"load average {result['machine']['load_average_1_5_15']}")
    log("imports ...")
    result["imports"] = imports(args.plain_python)
    result["plain_python"] = args.plain_python
    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        runs: dict = {}
        for name, configs in (("resunet", RESUNET), ("student", STUDENT)):
            log(f"one case, {name} ...")
            runs[f"{name}_cold"] = run_inference(configs, CASE, tmp / f"{name}_cold", cache, device=args.device)
            runs[f"{name}_warm"] = run_inference(configs, CASE, tmp / f"{name}_warm", cache, device=args.device)
            result[f"stages_{name}"] = stages(configs, tmp / f"stages_{name}", cache, args.device)
            if args.plain_python:  # the same torch, so the same cached export
                plain = args.plain_python
                runs[f"{name}_plain"] = run_inference(configs, CASE, tmp / f"{name}_plain", cache, python=plain)
        log("TTA, one case ...")
        runs["resunet_tta"] = run_inference(RESUNET, CASE, tmp / "tta", cache, "--tta", "true", device=args.device)
        log(f"{args.cases}-case batch ...")
        batch = make_batch(tmp / "batch", args.cases)
        runs["resunet_batch"] = run_inference(RESUNET, batch, tmp / "batch_out", cache, device=args.device)
        result["runs"] = runs
    result["result"] = summarise(result, args.cases)
    result["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return result


def summarise(result: dict, n: int) -> dict:
    runs = result["runs"]
    batch = runs["resunet_batch"]
    steady = [c["case_s"] for c in batch["cases"][1:]]
    one, tta = runs["resunet_warm"], runs["resunet_tta"]
    plain = {
        f"one_case_{k}_plain_s": runs[f"{k}_plain"]["wall_s"] for k in ("resunet", "student") if f"{k}_plain" in runs
    }
    return {
        **plain,
        "one_case_resunet_s": one["wall_s"],
        "one_case_resunet_cold_s": runs["resunet_cold"]["wall_s"],
        "one_case_student_s": runs["student_warm"]["wall_s"],
        "one_case_student_cold_s": runs["student_cold"]["wall_s"],
        "batch_cases": n,
        "batch_cases_per_min": round(60 * n / batch["wall_s"], 2),
        "batch_steady_cases_per_min": round(60 / statistics.median(steady), 2) if steady else None,
        "tta_over_one_pass": round(tta["wall_s"] / one["wall_s"], 2),
        "network_volumes_per_s": {
            k: round(1 / max(result[f"stages_{k}"]["stages_s"]["network"], 1e-9), 3) for k in ("resunet", "student")
        },
        "tta_network_over_one_pass": round(tta["cases"][0]["network_s"] / max(one["cases"][0]["network_s"], 1e-9), 2),
    }


# ------------------------------------------------------------------------------------------------------ docs
def _row(name: str, run: dict) -> str:
    c = run["cases"][0] if len(run["cases"]) == 1 else None
    per_case = f"{c['data_s']:.1f} / {c['network_s']:.1f} / {c['post_s']:.1f}" if c else "see the batch rows"
    return (
        f"| {name} | {run['wall_s']:.1f} | {run.get('cpu_s', float('nan')):.1f} | {run['imports_and_arguments_s']:.1f} | "
        f"{run['config_build_and_weights_s']:.1f} | {run['engine_s']:.1f} | {per_case} | {run['exit_s']:.1f} |"
    )


NOTES = [
    "What the command does besides the network, and what changed (issue 30):",
    "",
    "- **ONNX export**: cached in `$XDG_CACHE_HOME/resunet-brats/onnx/` by the weights' md5 and the opset; only "
    "the first run of a network exports (the cold rows), every later run reads the file.",
    "- **ONNX Runtime memory**: the session keeps its CPU memory arena and plans no memory pattern per input shape "
    "(`scripts/inferers.py`): without the arena every pass allocated its GBs of activations afresh (the ResUNet's "
    "pass on this case 4.9 s instead of 3.8 s, the student's 1.35 s instead of 0.57 s), and with patterns too the "
    "peak doubled.",
    "- **Imports**: `import monai` imports every optional package that is installed (mlflow, ignite, itk, "
    "matplotlib, scipy, scikit-learn, pandas, ...). mlflow is the optional `requirements-tracking.txt` (only "
    "`--tracking mlflow` needs it) and nilearn, which brings scikit-learn and pandas, the optional "
    "`requirements-synthetic.txt` (only the MNI152 generator needs it); the test requirements bring them back, with "
    'IPython. A plain `requirements.txt` install (the lines "in the plain install", when measured with '
    "`--plain_python`) imports monai in about 1.5-2 s less. `onnx` (0.65 s) is imported only when a network is "
    "exported, not when the cached export is read. ignite runs the engine, itk reads DICOM series, so both stay.",
    "- **Exit**: a Python process that imported monai spends 1-2 s freeing it at exit (its `atexit` handlers take "
    "milliseconds); a successful inference command now ends right after its last line "
    "(`scripts.options.skip_teardown`: logs flushed, exit code 0, outputs already complete).",
    "- **Batch**: cases are loaded and preprocessed in `num_workers` (2) `DataLoader` workers while the network "
    "runs, at most 2 cases ahead per worker; after the first case the data wait is about 0 s. A single case is "
    "loaded in the main process (`scripts.options.prefetch_workers`): there is no network time to hide it behind, "
    "and a worker's start and the transfer of the case cost about 1 s.",
    "- **TTA**: the 8 flips go through the network `tta_flips_per_call` (2) at a time; the network time is 8 "
    "passes, the rest of the command is paid once.",
    "- **Preprocessing and post-processing** (the step table): NIfTI decompression, the data checks, "
    "normalisation, histogram equalisation and the connected components of the post-processing each take "
    "well under a second; the writing is a few hundredths.",
]


def _plain(summary: dict, network: str) -> str:
    seconds = summary.get(f"one_case_{network}_plain_s")
    return "" if seconds is None else f"; {seconds:.1f} s in a plain install"


def markdown(result: dict) -> str:
    r, runs, m = result["result"], result["runs"], result["machine"]
    imp = result["imports"]
    lines = [
        SECTION,
        "",
        f"Measured by `{result['command']}` ({m['date']}, {m['cpu']}, {m['cores']} cores, device {result['device']}; "
        f"load average {m['load_average_1_5_15']} at the start, {m.get('load_average_at_end')} at the end: "
        "when it is above 0 the cores were shared and the times are upper bounds). Each row is a real subprocess of "
        "`python -m monai.bundle run --meta_file configs/metadata.json --config_file configs/inference.json "
        "--dataset_dir ... --output_dir ...` on the bundled real case; cold = the first run of a network (ONNX "
        "export), warm = the export read from the cache. These run in the test environment (`requirements-dev.txt`, "
        "which adds mlflow, nilearn, scikit-learn, pandas and IPython)"
        + (
            f'; the rows `*_plain` and "in a plain install" run with `{result["plain_python"]}`, a virtual '
            "environment made by the README's first command only (torch, then `requirements.txt`): what a user who "
            "installs the bundle to segment pays."
            if result.get("plain_python")
            else "."
        ),
        "",
        "| target (issue 30) | resolved when | goal | measured |",
        "|---|---|---|---|",
        f"| one case, ResUNet | <= 12 s | <= 8 s | {r['one_case_resunet_s']:.1f} s (cold {r['one_case_resunet_cold_s']:.1f} s)"
        f"{_plain(r, 'resunet')} |",
        f"| one case, student | <= 8 s | <= 5 s | {r['one_case_student_s']:.1f} s (cold {r['one_case_student_cold_s']:.1f} s)"
        f"{_plain(r, 'student')} |",
        f"| {r['batch_cases']}-case batch, ResUNet | >= 6 cases/min | >= 10 cases/min | "
        f"{r['batch_cases_per_min']:.1f} cases/min (steady state {r['batch_steady_cases_per_min']} cases/min) |",
        f"| TTA (8 flips) / one pass | <= 4x | <= 3x | {r['tta_over_one_pass']:.2f}x (network alone "
        f"{r['tta_network_over_one_pass']:.2f}x) |",
        "",
        "Stages of each command (seconds): imports and argument parsing, config parsing with the components and the "
        "weights, the engine (per case: data wait / network / post-processing with writing), exit.",
        "",
        "| run | wall | CPU (user + sys, all processes) | imports | config + weights | engine | data / network / post "
        "| exit |",
        "|---|---|---|---|---|---|---|---|",
        *[_row(k, v) for k, v in runs.items()],
        "",
        "Imports (fresh interpreter, wall seconds with exit; the largest packages by `-X importtime`, cumulative and "
        "nested in one another):",
        "",
        *[
            f"- `{v['statement']}`{' with ' + ', '.join(v['hidden']) + ' not installed' if v['hidden'] else ''}"
            f"{' in the plain install' if name.endswith('_plain_install') else ''}: "
            f"{v['wall_s']:.1f} s ({', '.join(f'{k} {s:.2f}' for k, s in v['top_s'].items())})"
            for name, v in imp.items()
        ],
        "",
        "One case step by step (the stage worker, one process, the configured transforms one by one, seconds):",
        "",
        "| step | ResUNet | student |",
        "|---|---|---|",
    ]
    a, b = result["stages_resunet"]["stages_s"], result["stages_student"]["stages_s"]
    lines += [f"| {k} | {a[k]:.2f} | {b.get(k, float('nan')):.2f} |" for k in a]
    v = r["network_volumes_per_s"]
    lines += ["", *NOTES]
    lines += [
        "",
        f"Network alone, warm, whole brain-cropped volume ({result['stages_resunet']['shape']}): "
        f"{v['resunet']:.2f} volumes/s ResUNet, {v['student']:.2f} volumes/s student (device {result['device']}).",
        "",
        "GPU: not measured (no accelerator was lent); `python -m benchmarks.bench_end_to_end --device cuda` runs "
        "the same benchmark there (torch backend, mixed precision) against the seed article's 12 frames/s on a V100.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=20, help="cases in the batch (copies of the example case)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the GPU benchmark)")
    p.add_argument("--output_json", default=str(REPO_ROOT / "benchmarks" / "results" / "end_to_end.json"))
    p.add_argument("--output_md", default=None, help="replace the end-to-end section of this page")
    p.add_argument("--stages", default=None, help=argparse.SUPPRESS)  # the stage worker
    p.add_argument("--case", default=str(CASE), help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    p.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--tta_compare", default=None, help="only compare TTA flips per call, e.g. 1,2,4 (stage worker)")
    p.add_argument("--network", default="resunet", choices=("resunet", "student"), help="network of --tta_compare")
    p.add_argument("--from_json", default=None, help="write the section from an earlier run's JSON, measure nothing")
    p.add_argument(
        "--plain_python",
        default=None,
        help="also run one case with each network with this interpreter: a virtual environment with only "
        "requirements.txt, as the README's first command installs (the same torch)",
    )
    args = p.parse_args(argv)
    if args.stages:
        overrides = json.loads(args.overrides)
        print(
            json.dumps(stage_worker(json.loads(args.stages), args.case, args.work, args.ckpt, args.device, overrides))
        )
        return 0
    if args.tta_compare:
        result = tta_compare(args)
        write_json(result, Path(args.output_json).with_name("tta_flips_per_call.json"))
        section = tta_markdown(result)
        print(section)
        if args.output_md:
            write_text(replace_markdown_sections(Path(args.output_md).read_text(), section), args.output_md)
        return 0
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
    else:
        result = measure(args)
        write_json(result, args.output_json)
    section = markdown(result)
    print(section)
    if args.output_md:
        text = Path(args.output_md).read_text() if Path(args.output_md).exists() else ""
        write_text(replace_markdown_sections(text, section), args.output_md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
