"""Runs inside the official package's virtual environment (see brats_official_crosscheck.py): evaluates each
(prediction, reference) pair with ``brats_evaluation`` and its bundled glioma config, prints JSON on stdout.

Input (argv[1]): a JSON file ``[{"name", "pred", "ref"}, ...]`` of label maps already in the BraTS 2023 label
values the ``gli`` config expects (1 necrotic core, 2 oedema, 3 enhancing tumour)."""

import json
import math
import sys

from brats_evaluation import config_path, evaluate_single_exam
from panoptica import Panoptica_Evaluator

KEYS = ("global_bin_dsc", "global_bin_hd95", "pq_dsc", "sq_dsc", "sq_hd95", "tp", "fp", "fn")


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def main() -> None:
    pairs = json.load(open(sys.argv[1]))
    evaluator = Panoptica_Evaluator.load_from_config(str(config_path("gli")))
    out = {}
    for pair in pairs:
        result = evaluate_single_exam(pair["pred"], pair["ref"], pair["name"], evaluator)
        if "error" in result:
            raise SystemExit(f"{pair['name']}: official evaluation failed: {result['error']}")
        out[pair["name"]] = {region: {k: _clean(result[region].get(k)) for k in KEYS} for region in ("et", "tc", "wt")}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
