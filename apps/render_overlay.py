"""Render a four-modality study and a label map over its FLAIR as a PNG (e.g. a MONAI Label prediction).

    python -m apps.render_overlay --study STUDY.nii.gz --label PRED.nii.gz --output overlay.png

``--study`` is a 4D NIfTI (X x Y x Z x 4, channels T1, T1ce, T2, FLAIR), as in a MONAI Label datastore; ``--label``
a 3D BraTS label map (0/1/2/4) on the same grid. The slice goes through the label's centre of mass.
"""

from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np

from scripts.conventions import MODALITIES
from scripts.synthetic.phantom import save_preview


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--title", default="prediction")
    parser.add_argument("--plane", default="axial", choices=("axial", "coronal", "sagittal"))
    args = parser.parse_args(argv)
    study = np.asarray(nib.load(args.study).dataobj)
    label = np.asarray(nib.load(args.label).dataobj)
    if study.ndim != 4 or study.shape[-1] != len(MODALITIES):
        raise SystemExit(f"{args.study}: expected X x Y x Z x {len(MODALITIES)}, got {study.shape}")
    if label.shape != study.shape[:3]:
        raise SystemExit(f"{args.label}: shape {label.shape} does not match the study's grid {study.shape[:3]}")
    arrays = {m: study[..., i] for i, m in enumerate(MODALITIES)}
    return save_preview({**arrays, "seg": label}, args.output, plane=args.plane, title=args.title)


if __name__ == "__main__":
    print(main())
