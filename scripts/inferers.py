"""Inference helpers MONAI lacks: flip test-time augmentation around any inferer, and the network the
inference evaluator calls (torch, torch under autocast, or ONNX Runtime)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import itertools
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from monai.inferers import Inferer

from scripts.io import atomic_path

logger = logging.getLogger(__name__)


class FlipTTAInferer(Inferer):
    """Average an inferer's logits over all flips of the given spatial axes (2^len(axes) passes).

    ``inputs``: (B, C, *spatial); the result has the shape of ``inferer(inputs, network)``. Each flipped
    prediction is flipped back before averaging. With ``spatial_axes=(0, 1, 2)`` that is 8 passes, the
    mirroring nnU-Net uses at test time.

    ``flips_per_call``: how many flipped copies go through ``inferer`` together, stacked on the batch axis (the
    network sees them in one call of ``sw_batch_size`` windows; memory grows with it). 1 runs them one by one.
    The result is the same either way (the network runs in eval mode, samples do not interact). Each group's
    time is logged, so a long TTA run is never silent.
    """

    def __init__(self, inferer: Inferer, spatial_axes: Sequence[int] = (0, 1, 2), flips_per_call: int = 1) -> None:
        super().__init__()
        if int(flips_per_call) < 1:
            raise ValueError(f"flips_per_call must be at least 1, got {flips_per_call!r}")
        self.inferer = inferer
        self.spatial_axes = tuple(spatial_axes)
        self.flips_per_call = int(flips_per_call)

    def flips(self) -> list[list[int]]:
        """The tensor dims flipped in each pass (the unflipped pass ``[]`` first)."""
        return [
            [a + 2 for a in axes]
            for n in range(len(self.spatial_axes) + 1)
            for axes in itertools.combinations(self.spatial_axes, n)
        ]

    def passes(self, inputs: torch.Tensor, network: Callable, *args, **kwargs) -> Iterator[torch.Tensor]:
        """Each flipped pass's prediction, flipped back (the unflipped pass first)."""
        flips, batch = self.flips(), inputs.shape[0]
        for start in range(0, len(flips), self.flips_per_call):
            group, t0 = flips[start : start + self.flips_per_call], time.perf_counter()
            stacked = torch.cat([torch.flip(inputs, dims) if dims else inputs for dims in group])
            preds = self.inferer(stacked, network, *args, **kwargs)
            logger.info(
                "TTA flips %d-%d of %d: %.1f s", start + 1, start + len(group), len(flips), time.perf_counter() - t0
            )
            for i, dims in enumerate(group):
                pred = preds[i * batch : (i + 1) * batch]
                yield torch.flip(pred, dims) if dims else pred

    def __call__(self, inputs: torch.Tensor, network: Callable, *args, **kwargs) -> torch.Tensor:
        total, count = None, 0
        for pred in self.passes(inputs, network, *args, **kwargs):
            total = pred if total is None else total + pred
            count += 1
        return total / count


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 convolutions natively (oneDNN with avx512_bf16 or AMX). Without it torch
    emulates them: measured about 35x slower than fp32 on an AVX2-only CPU (see docs/benchmarks.md)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class AutocastNetwork(torch.nn.Module):
    """Run ``network`` under ``torch.autocast`` of the input's device type with ``dtype``; float32 out, so
    the sliding-window blending and the post-processing stay in full precision."""

    def __init__(self, network: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.network = network
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.network(x).float()


def user_cache_dir() -> str:
    """The bundle's folder in the user's cache: ``$XDG_CACHE_HOME/resunet-brats`` (default ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "resunet-brats")


def weights_md5(network: torch.nn.Module) -> str:
    """The md5 of ``network``'s ``state_dict`` (names, dtypes, shapes and bytes, in order): the weights as the
    network holds them now, whichever file they came from."""
    digest = hashlib.md5()
    for name, value in network.state_dict().items():
        t = torch.as_tensor(value).detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(value.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def onnx_cache_name(network: torch.nn.Module, opset_version: int) -> str:
    """``<weights md5>-<architecture>-opset<N>.onnx``: the architecture part is a hash of the module's
    ``repr`` and the torch version (what the exporter sees besides the weights)."""
    arch = hashlib.md5(f"{network!r}|torch {torch.__version__}".encode()).hexdigest()[:12]
    return f"{weights_md5(network)}-{arch}-opset{int(opset_version)}.onnx"


_NEEDS_ONNX = (
    "the onnxruntime inference backend needs the onnxruntime and onnx packages: "
    "pip install -c constraints.txt -r requirements.txt (or use --inference_backend torch)"
)


class OnnxRuntimeNetwork(torch.nn.Module):
    """Run ``network`` with ONNX Runtime on the CPU, as a drop-in for the torch module in any inferer.

    The network is exported (``torch.onnx.export``, TorchScript-based, batch and spatial axes dynamic) at
    the first call, i.e. after the workflow has loaded the weights; later changes to its
    weights are not seen. Inputs on another device are copied to the CPU and the logits copied back.
    ONNX Runtime uses as many threads as torch.

    The session keeps a memory arena as large as the largest pass so far (:meth:`release` frees it).

    The exported model is cached in ``cache_dir`` (default :func:`user_cache_dir` ``/onnx``; ``None`` or ``""``
    turns the cache off) under :func:`onnx_cache_name` (the weights' md5 and the opset), written atomically:
    the next run with the same weights skips the export. A cache that cannot be read or written is a logged
    warning and the run goes on with a fresh export.
    """

    def __init__(self, network: torch.nn.Module, opset_version: int = 17, cache_dir: str | None = "default") -> None:
        super().__init__()
        try:
            import onnxruntime
        except ImportError as e:
            raise ImportError(_NEEDS_ONNX) from e
        if importlib.util.find_spec("onnx") is None:  # torch.onnx.export imports it (0.65 s) when it exports
            raise ImportError(_NEEDS_ONNX)
        self._ort = onnxruntime
        self.network = network
        self.opset_version = opset_version
        self.cache_dir = os.path.join(user_cache_dir(), "onnx") if cache_dir == "default" else cache_dir
        self.cache_path: str | None = None
        self._session = None
        self._model: bytes | str | None = None  # the exported model (bytes) or its cache file

    def _export_bytes(self, example: torch.Tensor) -> bytes:
        buf = io.BytesIO()
        axes = {0: "batch", **{d: f"spatial{d - 2}" for d in range(2, example.ndim)}}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and instance-norm notes
            torch.onnx.export(
                self.network,
                (example,),
                buf,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": axes, "logits": axes},
                opset_version=self.opset_version,
                dynamo=False,
            )
        return buf.getvalue()

    def _session_of(self, model: bytes | str):
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # the CPU arena without memory patterns: a pattern is planned per input shape and kept beside the arena (peak
        # RSS over 3 passes of a 144 x 176 x 144 case: ResUNet 2.8 GB with both, 1.6 GB without patterns), and
        # without the arena every pass allocates its GBs of activations afresh (first pass 4.9 s against 3.8 s,
        # student 1.35 s against 0.57 s; 7 cases of 4 sizes: every pass 15-30 % faster, peak 2.3 GB against 2.1 GB)
        options.enable_cpu_mem_arena = True
        options.enable_mem_pattern = False
        return self._ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def _cached_session(self):
        """The session of the cached export, or ``None`` (not cached yet, or unreadable: a warning)."""
        if not os.path.isfile(self.cache_path):
            return None
        try:
            session = self._session_of(self.cache_path)
        except Exception as e:  # a damaged cache entry: export again and replace it
            logger.warning("ONNX cache %s unreadable (%s): exporting again", self.cache_path, type(e).__name__)
            return None
        logger.info("ONNX model from the cache: %s", self.cache_path)
        return session

    def _store(self, model: bytes) -> None:
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
            with atomic_path(self.cache_path) as tmp, open(tmp, "wb") as f:
                f.write(model)
        except OSError as e:
            logger.warning("ONNX cache %s not written (%s): this run goes on uncached", self.cache_path, e)
            return
        logger.info("ONNX model exported and cached: %s", self.cache_path)

    def _export(self, example: torch.Tensor):
        if self.cache_dir:
            self.cache_path = os.path.join(self.cache_dir, onnx_cache_name(self.network, self.opset_version))
            session = self._cached_session()
            if session is not None:
                self._model = self.cache_path
                return session
        model = self._export_bytes(example)
        if self.cache_dir:
            self._store(model)
        self._model = model
        return self._session_of(model)

    def release(self) -> None:
        """Free the session and its memory arena (the activations of the largest pass so far); the next call
        builds the session again from the exported model, without exporting again."""
        self._session = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cpu = torch.as_tensor(x).detach().to("cpu", torch.float32).contiguous()
        if self._session is None:
            self._session = self._export(cpu[:1]) if self._model is None else self._session_of(self._model)
        logits = self._session.run(None, {"image": cpu.numpy()})[0]
        return torch.from_numpy(logits).to(x.device)


BACKENDS = ("torch", "onnxruntime")


def default_backend(device: str | torch.device) -> str:
    """``onnxruntime`` on a CPU where onnxruntime and onnx (for the export) are installed (measured faster,
    see docs/benchmarks.md), ``torch`` otherwise (CUDA, or an environment without them)."""
    if torch.device(device).type != "cpu":
        return "torch"
    installed = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))
    return "onnxruntime" if installed else "torch"


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def inference_network(
    network: torch.nn.Module, backend: str = "torch", precision: str = "fp32", device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """The module an inference evaluator calls instead of ``network``.

    ``backend``: ``torch`` (``network`` itself) or ``onnxruntime`` (:class:`OnnxRuntimeNetwork`, CPU, fp32).
    ``precision`` (torch backend): ``fp32``; ``bf16`` autocast on CUDA, or on a CPU that runs bf16 natively
    (:func:`cpu_bf16_supported`; elsewhere a warning and fp32); ``fp16`` autocast on CUDA only.
    """
    if backend not in BACKENDS:
        raise ValueError(f"inference_backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    if backend == "onnxruntime":
        if precision != "fp32":
            raise ValueError(f"precision {precision!r} needs inference_backend 'torch' (onnxruntime runs fp32)")
        return OnnxRuntimeNetwork(network)
    device_type = torch.device(device).type
    if precision == "fp16" and device_type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device; on a CPU use 'bf16' or 'fp32'")
    if precision == "bf16" and device_type == "cpu" and not cpu_bf16_supported():
        warnings.warn(
            "this CPU has no native bf16 (avx512_bf16/AMX): precision 'bf16' falls back to fp32", stacklevel=2
        )
        return network
    dtype = PRECISIONS[precision]
    return network if dtype is None else AutocastNetwork(network, dtype)
