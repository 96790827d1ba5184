"""Measurements of ``bench_peers.py``, each in a fresh worker process: forward latency per patch,
whole-volume sliding-window inference, training steps and the machine's matmul peak; the machine description."""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks.peers import IN_CHANNELS, REPO_ROOT, log, window_plan, worker_model
from scripts.io import write_json

# =============================================================================================================
# worker (a fresh subprocess per model and task)
# =============================================================================================================


def _peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def _current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _autocast(device, precision: str):
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _timed(fn: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None], what: str) -> list[float]:
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        sync()
        log(f"    {what}: warm-up {i + 1}/{warmup} {time.perf_counter() - t0:.3f} s")
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        log(f"    {what}: {i + 1}/{repeats} {times[-1]:.3f} s")
    return times


def _summary(times: list[float]) -> dict:
    return {
        "times_s": times,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
    }


def worker_main(task_path: str) -> int:
    with open(task_path) as f:
        task = json.load(f)
    if task.get("mem_limit") and task["device"] == "cpu":
        # allocations beyond the limit raise (RuntimeError "can't allocate memory") instead of waking the OOM killer
        resource.setrlimit(resource.RLIMIT_DATA, (int(task["mem_limit"]), int(task["mem_limit"])))
    try:
        _worker(task)
    except Exception as e:  # noqa: BLE001 - reported to the main process, which goes on with the next job
        import traceback

        traceback.print_exc()
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        oom = "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower()
        write_json(
            {"error": ("out of memory: " if oom else "") + f"{type(e).__name__}: {msg[:300]}"}, task["result_path"]
        )
        return 1
    return 0


class _Run:
    """One worker's settings: device, precision, warm-up and timed repetitions, and a device ``sync``."""

    def __init__(self, task: dict) -> None:
        import torch

        if task.get("threads"):
            torch.set_num_threads(int(task["threads"]))
        self.device = torch.device(task["device"])
        self.is_cuda = self.device.type == "cuda"
        if self.is_cuda:
            torch.backends.cudnn.benchmark = True
        self.precision = task["precision"]
        self.warmup, self.repeats = int(task["warmup"]), int(task["repeats"])

    def sync(self) -> None:
        if self.is_cuda:
            import torch

            torch.cuda.synchronize(self.device)

    def timed(self, fn: Callable[[], Any], what: str, warmup: int | None = None, repeats: int | None = None) -> dict:
        warmup = self.warmup if warmup is None else warmup
        repeats = self.repeats if repeats is None else repeats
        return _summary(_timed(fn, warmup, repeats, self.sync, what))


def _worker(task: dict) -> None:
    """Run one measurement (``task["task"]``: matmul, patch, volume or train) and write its result JSON."""
    import torch

    run = _Run(task)
    result: dict = {"threads": torch.get_num_threads()}
    torch.manual_seed(0)
    if task["task"] in ("matmul", "roofline"):
        from benchmarks.roofline import measure_roofline

        measure_machine = {"matmul": _measure_matmul, "roofline": measure_roofline}[task["task"]]
        write_json(result | measure_machine(task, run), task["result_path"])
        return
    measure = {"patch": _measure_patch, "case": _measure_volume, "volume": _measure_volume, "train": _measure_train}
    measure = measure.get(task["task"])
    if measure is None:
        raise ValueError(f"unknown task {task['task']!r}")
    spec = task["spec"]
    if task["task"] == "train" and spec.get("train_deep_supervision"):
        spec = dict(spec, deep_supervision=True)
    model = worker_model(spec, run.device)
    baseline_rss = _current_rss_bytes()
    if run.is_cuda:
        torch.cuda.synchronize(run.device)
        torch.cuda.reset_peak_memory_stats(run.device)
        baseline_cuda = torch.cuda.memory_allocated(run.device)
    result.update(measure(task, spec, model, run))
    result["peak_rss_bytes"] = _peak_rss_bytes()
    result["baseline_rss_bytes"] = baseline_rss
    if run.is_cuda:
        result["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(run.device))
        result["cuda_baseline_bytes"] = int(baseline_cuda)
    write_json(result, task["result_path"])


def _measure_matmul(task: dict, run: _Run) -> dict:
    """The machine's peak: a square ``torch.mm`` of ``task["size"]`` in the run's precision."""
    import torch

    n = int(task["size"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[run.precision]
    a = torch.randn(n, n, device=run.device, dtype=dtype)
    b = torch.randn(n, n, device=run.device, dtype=dtype)
    with torch.inference_mode():
        result = run.timed(
            lambda: torch.mm(a, b), f"matmul {n}^2 {run.precision}", max(run.warmup, 1), max(run.repeats, 3)
        )
    result["size"] = n
    result["dtype"] = run.precision
    result["gflops"] = 2 * n**3 / result["median_s"] / 1e9
    result["gflops_best"] = 2 * n**3 / result["min_s"] / 1e9
    return result


def _measure_patch(task: dict, spec: dict, model, run: _Run) -> dict:
    """Forward latency of one ``1 x 4 x patch`` input in eval mode."""
    import torch

    model.eval()
    x = torch.randn((1, IN_CHANNELS, *task["patch"]), device=run.device)

    def fwd():
        with _autocast(run.device, run.precision):
            return model(x)

    with torch.inference_mode():
        result = run.timed(fwd, f"{spec['key']} forward 1x4x{'x'.join(map(str, task['patch']))}")
    result["patch"] = task["patch"]
    return result


def _measure_volume(task: dict, spec: dict, model, run: _Run) -> dict:
    """Whole-case sliding-window inference (``task["task"]``: ``case`` or ``volume``) on a random input of
    ``task["shape"]`` with the model's own settings; warm-up: one batch of windows (the ONNX export)."""
    import torch
    from monai.inferers import SlidingWindowInferer

    model.eval()
    sw, shape = spec["sw"], task["shape"]
    if sw.get("backend", "torch") != "torch":  # exported at the warm-up call
        from scripts.inferers import inference_network

        model = inference_network(model, sw["backend"], run.precision, run.device)
    inferer = SlidingWindowInferer(
        roi_size=sw["roi_size"],
        sw_batch_size=sw["sw_batch_size"],
        overlap=sw["overlap"],
        mode=sw["mode"],
        sw_device=run.device,
        device=run.device,
        progress=False,
    )
    g = torch.Generator().manual_seed(0)
    image = torch.randn((1, IN_CHANNELS, *shape), generator=g).to(run.device)
    windows = [0]

    def predictor(batch):
        windows[0] += batch.shape[0]
        with _autocast(run.device, run.precision):
            return model(batch)

    plan = window_plan(sw, shape)
    what = f"{spec['key']} {task['task']} 1x4x{'x'.join(map(str, shape))}"
    with torch.inference_mode():
        # warm-up: one batch of windows (a whole extra case would add up to one more run of the whole case)
        warm = torch.randn((min(sw["sw_batch_size"], plan["windows"]), IN_CHANNELS, *plan["roi"]), device=run.device)
        for i in range(max(run.warmup, 1)):
            t0 = time.perf_counter()
            predictor(warm)
            run.sync()
            log(f"    {what}: warm-up window batch {i + 1} {time.perf_counter() - t0:.3f} s")
        del warm
        windows[0] = 0
        out_shape = []
        result = run.timed(lambda: out_shape.append(list(inferer(image, predictor).shape)), what, warmup=0)
    result["windows"] = windows[0] // max(run.repeats, 1)
    result["shape"] = shape
    result["roi"] = plan["roi"]
    result["output_shape"] = out_shape[-1] if out_shape else None
    return result


def _measure_train(task: dict, spec: dict, model, run: _Run) -> dict:
    """Training steps (forward + backward + Adam) on the model's training patch, with nnU-Net's deep-supervision
    weights when the model has several outputs."""
    import torch
    from monai.losses import DiceCELoss

    model.train()
    patch, batch = task["train_patch"], int(task["train_batch"])
    loss_fn = DiceCELoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    scaler = torch.amp.GradScaler(run.device.type) if run.precision == "fp16" else None
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch, IN_CHANNELS, *patch), generator=g).to(run.device)
    with torch.no_grad():
        probe = model(torch.zeros((1, IN_CHANNELS, *patch), device=run.device))
    probes = probe if isinstance(probe, (list, tuple)) else [probe]
    targets = [(torch.rand((batch, *p.shape[1:]), generator=g) > 0.5).float().to(run.device) for p in probes]
    del probe, probes
    weights = _deep_supervision_weights(len(targets))

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast(run.device, run.precision):
            out = model(x)
            outs = out if isinstance(out, (list, tuple)) else [out]
            loss = sum(w * loss_fn(o.float(), t) for w, o, t in zip(weights, outs, targets) if w > 0)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    result = run.timed(step, f"{spec['key']} train step {batch}x4x{'x'.join(map(str, patch))}")
    result["train_patch"] = patch
    result["train_batch"] = batch
    result["outputs"] = len(targets)
    result["patches_per_s"] = batch / result["median_s"]
    result["voxels_per_s"] = batch * math.prod(patch) / result["median_s"]
    return result


def _deep_supervision_weights(n_out: int) -> list[float]:
    """nnU-Net's deep-supervision loss weights: 1/2^i, the lowest resolution 0, normalised to sum 1."""
    weights = [1.0 / 2**i for i in range(n_out)]
    if n_out > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def run_worker(task: dict, args, label: str) -> dict:
    """Run ``task`` in a fresh Python process; return its result or ``{"error": ...}``."""
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
        env["MKL_NUM_THREADS"] = str(args.threads)
    env["PYTHONWARNINGS"] = env.get("PYTHONWARNINGS", "ignore")
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmpdir:
        task = dict(task, result_path=os.path.join(tmpdir, "result.json"))
        task_path = os.path.join(tmpdir, "task.json")
        with open(task_path, "w") as f:
            json.dump(task, f)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [
                    sys.executable,
                    os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_peers.py"),
                    "--_worker",
                    task_path,
                ],
                env=env,
                cwd=REPO_ROOT,
                timeout=args.worker_timeout or None,
            )
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {args.worker_timeout} s", "wall_s": time.perf_counter() - t0}
        wall = time.perf_counter() - t0
        if os.path.exists(task["result_path"]):
            with open(task["result_path"]) as f:
                res = json.load(f)
            res["wall_s"] = wall
            return res
        why = f"worker exited with {rc}"
        if rc < 0:
            why = f"worker killed by signal {-rc}" + (" (likely out of memory)" if -rc == 9 else "")
        return {"error": why, "wall_s": wall}


# =============================================================================================================
# machine description
# =============================================================================================================


def machine_info(device: str, threads: int | None) -> dict:
    import torch

    info: dict = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname_platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "logical_cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("monai", "dynamic_network_architectures", "numpy"):
        try:
            info[dist] = version(dist)
        except PackageNotFoundError:
            info[dist] = None
    cpu = None
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu is None:
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1]
    except OSError:
        pass
    info["cpu_model"] = cpu or platform.processor() or "unknown"
    info["cpu_isa"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags.split()]
    try:
        with open("/proc/meminfo") as f:
            mem = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()}
        info["mem_total_bytes"] = mem.get("MemTotal")
        info["mem_available_bytes"] = mem.get("MemAvailable")
    except (OSError, ValueError, IndexError):
        info["mem_total_bytes"] = info["mem_available_bytes"] = None
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_bytes"] = props.total_memory
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info
