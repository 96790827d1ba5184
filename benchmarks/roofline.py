"""Roofline microbenchmark of ``bench_peers.py``: why the separable ResUNet is not faster than the dense one.

At every level of the bundle's ResUNet (its channels, the spatial size of that level for one window over the
real brain-cropped case), a dense 3x3x3 conv3d, a depthwise 3x3x3 conv3d (``groups = C``, the separable
variant's first half) and a 1x1x1 conv (its second half), C -> C channels, batch 1, fp32, each in torch
(channels-last, as ``scripts.networks.place`` puts the bundle's networks) and in ONNX Runtime (the bundle's CPU
backend). The machine's roofs: memory bandwidth from a large tensor copy, compute from the large matmul of
``bench_peers``. Per kernel: FLOPs (multiply-add = 2), the bytes it must move at least (input, output and
weights once, fp32), arithmetic intensity = FLOPs / bytes, the roof min(matmul peak, intensity x bandwidth) and
the achieved share of it.
"""

from __future__ import annotations

import math

KERNELS = ("dense", "depthwise", "pointwise")
KERNEL_LABELS = {
    "dense": "dense 3x3x3",
    "depthwise": "depthwise 3x3x3",
    "pointwise": "1x1x1",
}
BACKENDS = ("torch", "onnxruntime")
COPY_MIB = 512
QUICK_COPY_MIB = 64


def resunet_levels(network_def: dict, shape) -> list[dict]:
    """Channels and spatial size of every ResUNet level for an input of ``shape`` (``channels``, ``strides``
    of ``network_def``; a stride is an int or one per spatial dim)."""
    size, levels = list(shape), []
    for channels, stride in zip(network_def["channels"], network_def["strides"]):
        strides = stride if isinstance(stride, (list, tuple)) else [stride] * len(size)
        size = [math.ceil(v / s) for v, s in zip(size, strides)]
        levels.append({"channels": int(channels), "shape": list(size)})
    return levels


def kernel_counts(kind: str, channels: int, shape) -> dict:
    """FLOPs and minimum bytes (input + output + weights, fp32) of a C -> C conv of ``kind`` on ``shape``."""
    voxels = math.prod(shape)
    taps = 1 if kind == "pointwise" else 27
    per_group = 1 if kind == "depthwise" else channels
    weights = channels * per_group * taps
    flops = 2 * weights * voxels
    moved = 4 * (2 * channels * voxels + weights)
    return {"flops": flops, "bytes": moved, "intensity": flops / moved}


def _conv(kind: str, channels: int):
    import torch.nn as nn

    k = 1 if kind == "pointwise" else 3
    groups = channels if kind == "depthwise" else 1
    return nn.Conv3d(channels, channels, k, padding=k // 2, groups=groups, bias=False)


def _copy_bandwidth(mib: int, run) -> dict:
    """GB/s of ``dst.copy_(src)`` on two ``mib`` MiB fp32 tensors: bytes read + bytes written per second."""
    import torch

    n = mib * 2**20 // 4
    src = torch.randn(n, device=run.device)
    dst = torch.empty_like(src)
    result = run.timed(lambda: dst.copy_(src), f"copy {mib} MiB", max(run.warmup, 1), max(run.repeats, 3))
    result.update(mib=mib, gbytes_per_s=2 * n * 4 / result["median_s"] / 1e9)
    return result


def measure_roofline(task: dict, run) -> dict:
    """In a ``bench_peers`` worker: the copy bandwidth and every kernel of ``task["levels"]`` on every backend."""
    import torch

    from scripts.inferers import inference_network
    from scripts.networks import place

    out = {"copy": _copy_bandwidth(int(task["copy_mib"]), run), "kernels": []}
    for level in task["levels"]:
        c, shape = level["channels"], level["shape"]
        x = torch.randn((1, c, *shape), device=run.device)
        for kind in KERNELS:
            conv = place(_conv(kind, c), run.device).eval()
            for backend in task["backends"]:
                net = inference_network(conv, backend, "fp32", run.device)
                xb = x.to(memory_format=torch.channels_last_3d) if backend == "torch" else x
                what = f"{KERNEL_LABELS[kind]} C={c} {'x'.join(map(str, shape))} {backend}"
                with torch.inference_mode():
                    timed = run.timed(lambda net=net, xb=xb: net(xb), what)
                row = {"kind": kind, "channels": c, "shape": shape, "backend": backend}
                out["kernels"].append(row | timed | kernel_counts(kind, c, shape))
    return out


def _roof(row: dict, bandwidth: float, peak: float) -> tuple[float, str]:
    memory = row["intensity"] * bandwidth
    return (memory, "memory") if memory < peak else (peak, "compute")


def roofline_markdown(roof: dict, peak: float | None, matmul_label: str) -> list[str]:
    """The report section: the machine's roofs, one row per kernel, and the depthwise kernels' share of their roof."""
    L = ["## Kernel roofline (why the separable variant is not faster)", ""]
    if not roof or "error" in roof or not peak:
        why = (roof or {}).get("error") or ("no matmul peak" if not peak else "not run")
        return L + [f"Not measured ({why}).", ""]
    bw = roof["copy"]["gbytes_per_s"]
    L.append(
        f"`benchmarks/roofline.py`, in the same run. Roofs: memory bandwidth {bw:,.1f} GB/s (`copy_` of two "
        f"{roof['copy']['mib']} MiB fp32 tensors, bytes read + written); compute {peak:,.1f} GFLOP/s ({matmul_label}). "
        "Each kernel: C -> C channels at one level of the ResUNet (its spatial size for one window over the "
        "brain-cropped case), batch 1, fp32; torch with channels-last tensors (the bundle's placement), ONNX Runtime "
        "as the bundle runs it on CPU. Bytes = input + output + weights, each moved once (the least any kernel "
        "must move); intensity = FLOPs / bytes; roof = min(compute, intensity x bandwidth). The copy measures "
        "main-memory bandwidth: a kernel whose tensors fit in the caches (the deep levels) can pass its roof."
    )
    L.append("")
    header = ["kernel", "C", "level size", "backend", "GFLOP", "MB moved", "FLOP/byte", "median (ms)"]
    header += ["achieved GFLOP/s", "roof GFLOP/s", "bound", "% of roof"]
    L += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    share: dict[tuple[str, str], list[float]] = {}
    for r in roof["kernels"]:
        achieved = r["flops"] / r["median_s"] / 1e9
        limit, bound = _roof(r, bw, peak)
        share.setdefault((r["kind"], r["backend"]), []).append(100 * achieved / limit)
        cells = [KERNEL_LABELS[r["kind"]], r["channels"], "x".join(map(str, r["shape"])), r["backend"]]
        cells += [f"{r['flops'] / 1e9:,.2f}", f"{r['bytes'] / 1e6:,.1f}", f"{r['intensity']:,.1f}"]
        cells += [f"{r['median_s'] * 1e3:,.1f}", f"{achieved:,.1f}", f"{limit:,.1f}", bound]
        cells.append(f"{100 * achieved / limit:,.0f} %")
        L.append("| " + " | ".join(str(c) for c in cells) + " |")
    L.append("")
    for (kind, backend), values in share.items():
        L.append(
            f"- {KERNEL_LABELS[kind]}, {backend}: {min(values):,.0f}-{max(values):,.0f} % of its roof over the "
            f"{len(values)} levels."
        )
    L.append("")
    return L
