"""HTTP endpoints this app adds to (or puts in front of) MONAI Label's, installed when the server starts.

- ``POST /train/{model}`` (in front of the stock one, same parameters: ``params`` JSON body, ``run_sync``,
  ``enqueue``): the request and the datastore are checked first, so a request that cannot train is an HTTP error
  with a message (400 a bad option, 404 no such trainer, 409 no labelled study, 429 a training already running)
  for synchronous and asynchronous requests alike. An asynchronous request then goes to the stock endpoint (a
  background process whose status ``GET /train/`` shows); a synchronous one runs here, is recorded where
  ``GET /train/`` reads (``RUNNING``, then ``DONE`` with its result or ``ERROR`` with the message, and the run's
  last log lines), and answers with the result: the validation studies, the served and the new weights' Dice,
  whether the new weights are served, and why.
- ``GET /versions/{model}``: the kept versions of the model's weights (lib/versions.py), the served one marked.
- ``POST /versions/{model}/restore?version=<name>``: serve a kept version again (the weights served until then
  are kept too); the next inference loads it.
- every ``/datastore`` request: an ``image``, ``id``, ``label`` or ``tag`` that is not a plain name (a path such
  as ``../../x``) is HTTP 400 before any stock endpoint sees it (lib/uploads.py).
- ``PUT /datastore/label`` (in front of the stock one, same parameters): the study must exist (404) and the
  uploaded label must be a NIfTI label map on the study's grid (400 naming the problem) before it is stored.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import tempfile
import threading
import uuid

from fastapi import BackgroundTasks, Depends, File, Form, HTTPException, UploadFile
from monailabel.config import settings
from monailabel.endpoints import datastore as stock_datastore
from monailabel.endpoints import train as stock_train
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.async_tasks import utils as async_utils

from . import uploads, versions
from .retraining import TrainingRequestError

logger = logging.getLogger(__name__)

_sync_lock = threading.Lock()
_ADMIN = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))
_USER = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))
_ANNOTATOR = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))
_PARAMS = Form("{}")
_LABEL_FILE = File(...)
DETAIL_LINES = 20


def _now() -> str:
    return datetime.datetime.today().strftime("%Y-%m-%d %H:%M:%S")


def _trainer(model: str):
    trainers = app_instance()._trainers
    if model not in trainers:
        raise HTTPException(404, f"no trainer {model!r}; trainers: {sorted(trainers)}")
    return trainers[model]


def _check_not_busy() -> None:
    if _sync_lock.locked() or async_utils.processes("train"):
        raise HTTPException(429, "a training is already running; see GET /train/")


def _run_sync(model: str, request: dict) -> dict:
    """Run the training here, recorded in MONAI Label's train task list so that ``GET /train/`` shows it
    (``details``: the run's steps so far, lib/bundle_tasks.py)."""
    trainer = _trainer(model)
    task = {"id": str(uuid.uuid4()), "status": "RUNNING", "request": request, "start_ts": _now(), "sync": True}
    task["details"] = trainer.progress
    async_utils.background_tasks.setdefault("train", []).append(task)
    try:
        result = app_instance().train(request)
    except TrainingRequestError as e:
        task.update(status="ERROR", error=str(e))
        raise HTTPException(e.status, str(e)) from None
    except Exception as e:
        logger.exception(f"training {model} failed")
        task.update(status="ERROR", error=f"{type(e).__name__}: {e}")
        raise HTTPException(500, f"training {model} failed: {type(e).__name__}: {e}") from None
    finally:
        task["details"] = list(trainer.progress)[-DETAIL_LINES:]
        task["end_ts"] = _now()
    task.update(status="DONE", result=result)
    return result


def train_model(
    model: str,
    params: dict | None = None,
    run_sync: bool | None = False,
    enqueue: bool | None = False,
    user: User = _ADMIN,
):
    task = _trainer(model)
    request = {"model": model, **(params or {})}
    try:
        task.plan(request, app_instance().datastore())
    except TrainingRequestError as e:
        raise HTTPException(e.status, str(e)) from None
    if not run_sync:
        if _sync_lock.locked():
            raise HTTPException(429, "a synchronous training is running; see GET /train/")
        return stock_train.run_model(model, params, False, enqueue)
    _check_not_busy()
    with _sync_lock:
        return _run_sync(model, request)


def _served_weights(model: str) -> str:
    instance = app_instance()
    if model not in instance.models:
        raise HTTPException(404, f"no model {model!r} with versions; models: {sorted(instance.models)}")
    return os.path.join(instance.bundle_dir, "models", instance.models[model].weights)


def list_versions(model: str, user: User = _USER):
    served = _served_weights(model)
    return {"model": model, "served": served, "versions": versions.list_versions(served)}


def restore_version(model: str, version: str, user: User = _ADMIN):
    served = _served_weights(model)
    if _sync_lock.locked() or async_utils.processes("train"):
        raise HTTPException(409, "a training is running; restore a version when it has finished (GET /train/)")
    try:
        restored = versions.restore(served, version)
    except versions.VersionError as e:
        raise HTTPException(404, str(e)) from None
    logger.info(f"{model}: serving version {version} again ({served})")
    return {"model": model, "restored": restored, "versions": versions.list_versions(served)}


def _study_shape(image: str) -> tuple[int, ...] | None:
    """The shape of the local datastore's study ``image`` (404 when there is none); ``None`` for a DICOMweb
    datastore (its images are the PACS's series) or a study that is not a local NIfTI file."""
    import nibabel as nib
    from monailabel.datastore.dicom import DICOMWebDatastore

    datastore = app_instance().datastore()
    if isinstance(datastore, DICOMWebDatastore):
        return None  # the image is a PACS series (e.g. the one OHIF shows); the PACS answers for it
    if image not in datastore.list_images():
        raise HTTPException(404, f"image {image!r}: no such study in the datastore")
    uri = datastore.get_image_uri(image)
    if not (isinstance(uri, str) and os.path.isfile(uri) and uri.lower().endswith(uploads.LABEL_EXTENSIONS)):
        return None
    return tuple(int(s) for s in nib.load(uri).shape)


def save_label(
    background_tasks: BackgroundTasks,
    image: str,
    params: str = _PARAMS,
    tag: str = "final",
    label: UploadFile = _LABEL_FILE,
    user: User = _ANNOTATOR,
):
    """The stock ``PUT /datastore/label`` once the names, the study and the label file are checked (400/404)."""
    problem = uploads.name_problem("image", image) or uploads.name_problem("tag", tag)
    if problem or (problem := uploads.upload_name_problem(label.filename)):
        raise HTTPException(400, problem)
    shape = _study_shape(image)
    suffix = ".nii.gz" if label.filename.lower().endswith(".gz") else ".nii"
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        shutil.copyfileobj(label.file, tmp)
        tmp.flush()
        problem = uploads.label_file_problem(tmp.name, label.filename, shape)
    if problem:
        raise HTTPException(400, problem)
    label.file.seek(0)
    return stock_datastore.save_label(background_tasks, image, params, tag, label, user.username)


def install() -> None:
    """Add the endpoints to the running server (once), this app's ``POST /train/{model}`` before the stock one."""
    from monailabel.app import app as api

    if getattr(api.state, "resunet_endpoints", False):
        return
    prefix = settings.MONAI_LABEL_API_STR
    count = len(api.router.routes)
    api.add_api_route(f"{prefix}/train/{{model}}", train_model, methods=["POST"], tags=["Train"])
    api.add_api_route(f"{prefix}/versions/{{model}}", list_versions, methods=["GET"], tags=["Versions"])
    api.add_api_route(f"{prefix}/versions/{{model}}/restore", restore_version, methods=["POST"], tags=["Versions"])
    api.add_api_route(f"{prefix}/datastore/label", save_label, methods=["PUT"], tags=["Datastore"])
    added = api.router.routes[count:]
    del api.router.routes[count:]
    api.router.routes[0:0] = [uploads.RefuseBadNames(f"{prefix}/datastore"), *added]
    api.openapi_schema = None
    api.state.resunet_endpoints = True
    logger.info(f"Endpoints: {', '.join(sorted({r.path for r in added}))} (apps/resunet_brats/lib/endpoints.py)")
