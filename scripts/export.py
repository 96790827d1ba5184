"""Check exported networks against torch on a real case.

``python -m monai.bundle ckpt_export`` (TorchScript) and ``python -m monai.bundle onnx_export`` (ONNX) write the
files; this module loads the same network with its weights, preprocesses a case exactly as inference does, runs
the sliding-window inferer once with torch and once with the exported network, and reports the largest absolute
difference of the logits::

    python -m scripts.export --config_file "['configs/inference.json']" --ckpt_file models/model.pt \\
        --onnx models/model.onnx --torchscript models/model.ts --case ../shared/data/TCGA-DU-7294
"""

from __future__ import annotations

import argparse
import ast
import json
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from scripts.casework import load_network, parse_configs

__all__ = ["preprocess_case", "onnx_network", "max_abs_difference", "main"]


def preprocess_case(config_file: str | Sequence[str], case: str, overrides: Mapping | None = None) -> torch.Tensor:
    """The first case found at ``case`` (a case folder, a dataset folder or a 4D NIfTI file) after the bundle's
    ``preprocessing_transforms``: a ``(1, 4, *S)`` float tensor."""
    parser = parse_configs(config_file, overrides)
    from scripts.data.layouts import find_inference_cases

    item = find_inference_cases(case, "testing", parser.get_parsed_content("layout"))[0]
    transforms = parser.get_parsed_content("preprocessing_transforms")
    from monai.transforms import Compose

    return torch.as_tensor(Compose(transforms)(item)["image"]).float()[None]


def onnx_network(path: str, num_threads: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable running the ONNX model at ``path`` with ONNX Runtime on the CPU (first input in, first output
    out), usable as the network of any MONAI inferer."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads or torch.get_num_threads()
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out).to(x.device)

    return run


def max_abs_difference(
    image: torch.Tensor, reference: Callable, exported: Callable, inferer: Callable
) -> tuple[float, float]:
    """``(max |exported - reference|, max |reference|)`` of the logits of ``inferer(image, network)``."""
    with torch.no_grad():
        ref = inferer(image, reference)
        out = inferer(image, exported)
    return float((out - ref).abs().max()), float(ref.abs().max())


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config_file", required=True, help="a config file or a Python list of them")
    p.add_argument("--ckpt_file", required=True)
    p.add_argument("--case", required=True, help="a case folder, dataset folder or 4D NIfTI file")
    p.add_argument("--onnx", default=None)
    p.add_argument("--torchscript", default=None)
    args = p.parse_args(argv)
    configs = ast.literal_eval(args.config_file) if args.config_file.startswith("[") else args.config_file
    network = load_network(configs, args.ckpt_file)
    image = preprocess_case(configs, args.case)
    inferer = parse_configs(configs).get_parsed_content("sw_inferer")
    result = {"case_shape": list(image.shape[2:])}
    if args.onnx:
        result["onnx_max_abs_diff"], result["max_abs_logit"] = max_abs_difference(
            image, network, onnx_network(args.onnx), inferer
        )
    if args.torchscript:
        scripted = torch.jit.load(args.torchscript).eval()
        result["torchscript_max_abs_diff"], result["max_abs_logit"] = max_abs_difference(
            image, network, scripted, inferer
        )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
