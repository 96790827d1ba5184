"""Knowledge distillation of the ResUNet (teacher) into a smaller network (student), as ``configs/distill.json``
wires it into MONAI's ``SupervisedTrainer``.

* :func:`load_teacher` builds the teacher from its own config (``configs/train.json``) and loads its weights,
  frozen in eval mode.
* :class:`DistillationInferer` is the trainer's inferer: it returns the student's logits and keeps the teacher's
  logits of the same batch.
* :class:`DistillationLoss` is the trainer's loss: ground-truth loss (DiceCE) plus
  :class:`RegionDistillationLoss` between the student's and the teacher's logits.

The regions (TC, WT, ET) overlap and each has its own sigmoid, so the soft targets are per region and per voxel:
a binary distribution ``sigmoid(z / T)`` rather than a softmax over classes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.inferers import Inferer

from scripts.casework import load_network

__all__ = ["RegionDistillationLoss", "DistillationLoss", "DistillationInferer", "load_teacher"]


class RegionDistillationLoss(nn.Module):
    """Per-region sigmoid distillation with a temperature.

    For every region channel and voxel the teacher's soft target is ``p_t = sigmoid(z_t / T)`` and the student's
    prediction ``p_s = sigmoid(z_s / T)``; the loss is the binary Kullback-Leibler divergence
    ``p_t log(p_t / p_s) + (1 - p_t) log((1 - p_t) / (1 - p_s))`` averaged over voxels and regions and multiplied
    by ``T^2`` (so its gradients keep their scale when ``T`` changes, as in Hinton et al. 2015). It is 0 exactly
    when the student's logits equal the teacher's.

    Args:
        temperature: ``T > 0``; larger values soften the targets.

    Shapes:
        ``student_logits``, ``teacher_logits``: ``(B, C, *S)`` -> scalar.
    """

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.temperature = float(temperature)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student and teacher logits differ in shape: {list(student_logits.shape)} vs "
                f"{list(teacher_logits.shape)}."
            )
        t = self.temperature
        zs, zt = student_logits.float() / t, teacher_logits.detach().float() / t
        target = torch.sigmoid(zt)
        cross_entropy = F.binary_cross_entropy_with_logits(zs, target, reduction="none")
        teacher_entropy = F.binary_cross_entropy_with_logits(zt, target, reduction="none")
        return (cross_entropy - teacher_entropy).mean() * t * t


class DistillationInferer(Inferer):
    """Training inferer of a distillation run: ``network(inputs)`` for the student, plus the frozen teacher's
    logits of the same inputs in :attr:`teacher_logits` (computed without gradients).

    Args:
        teacher: the teacher network (see :func:`load_teacher`); kept in eval mode.

    Shapes:
        ``inputs``: ``(B, C_in, *S)`` -> student logits ``(B, C_out, *S)``; ``teacher_logits`` the same shape.
    """

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher.eval()
        self.teacher_logits: torch.Tensor | None = None

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        with torch.no_grad():
            self.teacher.eval()
            teacher_logits = self.teacher(inputs)
        self.teacher_logits = teacher_logits.detach()
        return network(inputs, *args, **kwargs)


class DistillationLoss(nn.Module):
    """``gt_weight * gt_loss(pred, label) + kd_weight * RegionDistillationLoss(pred, teacher logits)``.

    Args:
        gt_loss: the ground-truth loss (the bundle's DiceCE over the region channels).
        teacher: the :class:`DistillationInferer` whose ``teacher_logits`` belong to the batch being scored.
        temperature: distillation temperature.
        kd_weight, gt_weight: weights of the two terms (``>= 0``).

    Attributes:
        last_terms: the two terms of the latest call, as floats (``{"gt": ..., "kd": ...}``), for logging.
    """

    def __init__(
        self,
        gt_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        teacher: DistillationInferer,
        temperature: float = 2.0,
        kd_weight: float = 1.0,
        gt_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if kd_weight < 0 or gt_weight < 0:
            raise ValueError(f"kd_weight and gt_weight must be >= 0, got {kd_weight}, {gt_weight}.")
        self.gt_loss = gt_loss
        self.teacher = teacher
        self.kd_loss = RegionDistillationLoss(temperature)
        self.kd_weight = float(kd_weight)
        self.gt_weight = float(gt_weight)
        self.last_terms: dict[str, float] = {}

    def forward(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        teacher_logits = self.teacher.teacher_logits
        if teacher_logits is None:
            raise RuntimeError("no teacher logits: the trainer's inferer must be the DistillationInferer.")
        gt = self.gt_loss(pred, label)
        kd = self.kd_loss(pred, teacher_logits)
        self.last_terms = {"gt": float(gt.detach()), "kd": float(kd.detach())}
        return self.gt_weight * gt + self.kd_weight * kd


def load_teacher(config_file: str | Sequence[str], ckpt_path: str, device="cpu", overrides=None) -> nn.Module:
    """The frozen teacher: ``network_def`` of ``config_file`` (plus ``overrides``, ids as on the command line, e.g.
    ``{"network_def#channels": [32, 64, 128, 256]}``) with the weights of ``ckpt_path``, on ``device``, in eval
    mode and with gradients off (:func:`scripts.casework.load_network`).

    Raises:
        FileNotFoundError: if ``ckpt_path`` does not exist (train the teacher first).
        SystemExit: ``error: checkpoint <path> does not fit ...`` (one line) if the weights do not fit the network
            (a teacher trained with other settings: pass them as ``overrides`` or an extra config file).
    """
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"teacher weights {ckpt_path} not found: train the teacher (configs/train.json) first.")
    return load_network(config_file, ckpt_path, device, overrides)
