"""Dataset layouts -> one datalist format.

Every case becomes one datalist entry::

    {"case_id": "BraTS20_Training_001",
     "image": [".../_t1.nii.gz", ".../_t1ce.nii.gz", ".../_t2.nii.gz", ".../_flair.nii.gz"],
     "label": ".../_seg.nii.gz",          # only where a segmentation exists
     "fold": 3}                            # only in training datalists

The image list is always in the bundle's channel order T1, T1ce, T2, FLAIR (``MODALITIES``). A case can
also be one 4D NIfTI holding the four channels in that order (``"image": "case.nii.gz"``), which is what
MONAI Label hands a bundle.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

MODALITIES = ("t1", "t1ce", "t2", "flair")
"""BraTS 2020 file suffixes in the bundle's channel order (channel 0 T1, 1 T1ce, 2 T2, 3 FLAIR)."""
LABEL_SUFFIX = "seg"
NIFTI_EXTENSIONS = (".nii.gz", ".nii")


def _strip_nifti(name: str) -> str | None:
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return None


def case_id_from_path(path: str | os.PathLike) -> str:
    """``.../BraTS20_Training_001_t1.nii.gz`` -> ``BraTS20_Training_001``; ``.../case.nii.gz`` -> ``case``."""
    name = os.path.basename(str(path))
    stem = _strip_nifti(name) or os.path.splitext(name)[0]
    return re.sub(r"_(" + "|".join(MODALITIES + (LABEL_SUFFIX,)) + r")$", "", stem)


def find_brats2020_cases(root: str | os.PathLike) -> list[dict]:
    """All BraTS 2020-style cases under ``root`` (searched recursively), sorted by case id.

    A case is a set of ``<id>_t1``, ``<id>_t1ce``, ``<id>_t2``, ``<id>_flair`` NIfTI files in one folder,
    plus ``<id>_seg`` when labelled. Raises ``FileNotFoundError`` naming the case and the missing file when
    a case has some modalities but not all.
    """
    root = Path(root)
    cases = []
    for anchor in sorted(root.rglob("*_t1ce.nii*")):
        stem = _strip_nifti(anchor.name)
        if stem is None:
            continue
        prefix = stem[: -len("_t1ce")]
        ext = anchor.name[len(stem) :]
        images = [anchor.parent / f"{prefix}_{m}{ext}" for m in MODALITIES]
        missing = [str(p) for p in images if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"case {prefix}: missing modality file(s) {missing}")
        item = {"case_id": prefix, "image": [str(p) for p in images]}
        label = anchor.parent / f"{prefix}_{LABEL_SUFFIX}{ext}"
        if label.is_file():
            item["label"] = str(label)
        cases.append(item)
    return sorted(cases, key=lambda c: c["case_id"])


def assign_folds(cases: list[dict], num_folds: int = 5, seed: int = 0) -> list[dict]:
    """Copies of ``cases`` with a ``fold`` in [0, num_folds): a seeded shuffle dealt round-robin, so the
    folds differ in size by at most one case and the same seed always gives the same split."""
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2, got {num_folds}")
    if len(cases) < num_folds:
        raise ValueError(f"{len(cases)} cases cannot be split into {num_folds} folds")
    order = np.random.default_rng(seed).permutation(len(cases))
    out = [dict(c) for c in cases]
    for rank, i in enumerate(order):
        out[i]["fold"] = int(rank % num_folds)
    return out


def split_fold(datalist: dict, fold: int) -> tuple[list[dict], list[dict]]:
    """(training, validation) for cross-validation fold ``fold`` of a datalist whose training entries carry
    ``fold``; a datalist with an explicit ``validation`` list is returned as it is."""
    if datalist.get("validation"):
        return datalist["training"], datalist["validation"]
    training = datalist["training"]
    folds = {c.get("fold") for c in training}
    if fold not in folds:
        raise ValueError(f"fold {fold} not in the datalist (folds present: {sorted(f for f in folds if f is not None)})")
    return [c for c in training if c["fold"] != fold], [c for c in training if c["fold"] == fold]


def write_json_atomic(obj, path: str | os.PathLike) -> str:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename (never half-written)."""
    from scripts.io import atomic_path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    return str(path)


def load_datalist(path: str | os.PathLike) -> dict:
    """A datalist JSON with relative paths resolved against the JSON's folder (MONAI decathlon style)."""
    path = Path(path)
    try:
        datalist = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable datalist JSON ({e})") from e
    base = path.parent

    def resolve(p):
        return [resolve(q) for q in p] if isinstance(p, list) else str(base / p)

    for key, items in datalist.items():
        if isinstance(items, list):
            for item in items:
                for field in ("image", "label"):
                    if field in item:
                        item[field] = resolve(item[field])
    return datalist


def prepare_datalist(
    dataset_dir: str | os.PathLike,
    fold: int = 0,
    num_folds: int = 5,
    seed: int = 0,
    synthetic_cases: int = 30,
) -> dict:
    """The training datalist for ``dataset_dir``, with ``training`` and ``validation`` lists for ``fold``.

    ``dataset_dir`` may be a datalist JSON, or a folder of BraTS 2020-style cases. A folder that does not
    exist or holds no NIfTI file at all is filled with ``synthetic_cases`` generated BraTS-like cases first
    (the embedded default data), so training needs no download.
    """
    dataset_dir = Path(dataset_dir)
    if dataset_dir.suffix == ".json":
        datalist = load_datalist(dataset_dir)
    else:
        if not dataset_dir.exists() or not any(dataset_dir.rglob("*.nii*")):
            from scripts.data.synthetic import write_dataset

            write_dataset(dataset_dir, num_cases=synthetic_cases, seed=seed)
        cases = [c for c in find_brats2020_cases(dataset_dir) if "label" in c]
        if not cases:
            raise FileNotFoundError(f"{dataset_dir}: no labelled BraTS cases (<id>_t1/_t1ce/_t2/_flair/_seg.nii.gz)")
        datalist = {"training": assign_folds(cases, num_folds, seed)}
    training, validation = split_fold(datalist, fold)
    return {"training": training, "validation": validation}


def find_inference_cases(source: str | os.PathLike, datalist_key: str = "testing") -> list[dict]:
    """Cases to segment: a datalist JSON (its ``datalist_key`` list), a folder of BraTS-style cases
    (searched recursively), a folder of 4D NIfTI files, or one 4D NIfTI file."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: input does not exist")
    if source.suffix == ".json":
        datalist = load_datalist(source)
        if datalist_key not in datalist:
            raise KeyError(f"{source}: no '{datalist_key}' list (keys: {sorted(datalist)})")
        return [dict(c, case_id=c.get("case_id") or case_id_from_path(_first(c["image"]))) for c in datalist[datalist_key]]
    if source.is_file():
        return [{"case_id": case_id_from_path(source), "image": str(source)}]
    cases = find_brats2020_cases(source)
    if not cases:
        cases = [
            {"case_id": case_id_from_path(p), "image": str(p)}
            for p in sorted(source.iterdir())
            if _strip_nifti(p.name) is not None and p.is_file()
        ]
    if not cases:
        raise FileNotFoundError(f"{source}: no cases found (BraTS-style folders or 4D NIfTI files)")
    return [{k: v for k, v in c.items() if k != "label"} for c in cases]


def _first(image):
    return image[0] if isinstance(image, (list, tuple)) else image


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write a k-fold datalist JSON for a BraTS 2020 training folder.")
    parser.add_argument("--dataset_dir", required=True, help="folder of BraTS20_Training_xxx case folders")
    parser.add_argument("--output", required=True, help="datalist JSON to write (paths stored relative to it)")
    parser.add_argument("--num_folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cases = find_brats2020_cases(args.dataset_dir)
    labelled = [c for c in cases if "label" in c]
    if not labelled:
        raise SystemExit(f"{args.dataset_dir}: no labelled BraTS cases found")
    out_dir = Path(args.output).resolve().parent

    def rel(p):
        return [rel(q) for q in p] if isinstance(p, list) else os.path.relpath(p, out_dir)

    training = [dict(c, image=rel(c["image"]), label=rel(c["label"])) for c in assign_folds(labelled, args.num_folds, args.seed)]
    write_json_atomic({"training": training}, args.output)
    print(f"{args.output}: {len(training)} labelled cases in {args.num_folds} folds (seed {args.seed})")


if __name__ == "__main__":
    main()
