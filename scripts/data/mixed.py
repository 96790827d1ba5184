"""A training datalist that adds cases of a new generator version to an existing generated dataset.

Training on the new cases only would forget the old ones; training on all old cases would dilute the new ones. The
datalist holds every training case of the new dataset and as many (seeded draw) of the base dataset's training
cases, and validates on the held-out fold of both, so the selection sees whether the old cases got worse::

    python -m scripts.data.mixed --base data/synthetic_mni --base_folds 48 \\
        --new data/synthetic_v11 --new_folds 17 --output runs/v11/datalist.json

The case ids of the two datasets must differ (``scripts.synthetic.generator --case_prefix``). Paths are absolute,
so the JSON can be read from anywhere (``--dataset_dir runs/v11/datalist.json``).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from scripts.data.layouts import check_unique_case_ids, exit_or_raise, prepare_datalist
from scripts.io import write_json


def mixed_datalist(base: str, base_folds: int, new: str, new_folds: int, seed: int = 0) -> dict[str, list[dict]]:
    """``{"training": new training + an equal seeded draw of base training, "validation": base fold 0 + new
    fold 0}`` (fewer base cases when the base has fewer). A data error (no cases, a case id in both datasets)
    exits with one line ``error: ...``."""
    old = prepare_datalist(Path(base).resolve(), 0, base_folds, seed=0, exit_on_error=True)
    fresh = prepare_datalist(Path(new).resolve(), 0, new_folds, seed=0, exit_on_error=True)
    n = min(len(fresh["training"]), len(old["training"]))
    training = fresh["training"] + random.Random(seed).sample(old["training"], n)
    validation = old["validation"] + fresh["validation"]
    exit_or_raise(lambda: check_unique_case_ids(training + validation, f"the cases of {base} and {new}"), True)
    return {"training": training, "validation": validation}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the dataset trained on so far")
    parser.add_argument("--base_folds", type=int, default=48, help="its folds (fold 0 is held out)")
    parser.add_argument("--new", required=True, help="the cases of the new generator version")
    parser.add_argument("--new_folds", type=int, default=17, help="its folds (fold 0 is held out)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw from the base dataset")
    parser.add_argument("--output", required=True, help="the datalist JSON to write")
    a = parser.parse_args(argv)
    datalist = mixed_datalist(a.base, a.base_folds, a.new, a.new_folds, a.seed)
    write_json(datalist, a.output, indent=1)
    print(
        f"{a.output}: {len(datalist['training'])} training cases, {len(datalist['validation'])} held out "
        f"({a.base} and {a.new})"
    )
    return datalist


if __name__ == "__main__":
    main()
