"""What the app accepts from a client that writes to its datastore: ids, tags and file names that stay inside the
datastore, and label files the training can read.

MONAI Label 0.8.5's ``LocalDatastore`` joins the ``tag`` of ``PUT /datastore/label`` and the image id into paths
unchecked (``tag=../../x`` writes outside the labels folder and creates folders on the way), and stores any file
as a label (a ``.txt`` then fails the next ``POST /train`` with HTTP 500 that names no file). Here:

* :func:`name_problem`: an id, tag or label name is 1-128 characters of letters, digits, ``_``, ``-`` and ``.``,
  starting with a letter or digit, with no ``..``: never a path;
* :func:`query_problem`: the names among a request's query parameters (``image``, ``id``, ``label``, ``tag``);
  :class:`RefuseBadNames` answers every ``/datastore`` request with a bad one HTTP 400, whatever the method;
* :func:`upload_name_problem` and :func:`label_file_problem`: an uploaded label is a ``.nii`` / ``.nii.gz`` file
  that nibabel reads in full, a 3D label map of integer values on the study's grid (its first three axes).

Only the standard library, numpy, nibabel and starlette are imported, so the checks are tested without a server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qs

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
"""An id, tag or label name: letters, digits, ``_``, ``-``, ``.``; 1-128 characters, starting with a letter or
digit (so never ``.``, ``..``, a hidden name or a path)."""
NAMED_PARAMETERS = ("image", "id", "label", "tag")
"""The query parameters of the ``/datastore`` endpoints that name a datastore object or a label tag."""
LABEL_EXTENSIONS = (".nii.gz", ".nii")
"""The label files the training reads (``scripts.transforms.LoadLabeld``)."""


def name_problem(kind: str, value: str) -> str | None:
    """Why ``value`` cannot be the ``kind`` (``image``, ``tag``, ...) of a datastore object, or ``None``."""
    if NAME.match(value) and ".." not in value:
        return None
    shown = value if len(value) <= 80 else value[:77] + "..."
    return (
        f"{kind} {shown!r}: not a datastore name (1-128 letters, digits, '_', '-', '.', starting with a letter or "
        "digit, no '..'); ids and tags never name a path"
    )


def query_problem(params: Mapping[str, Sequence[str]]) -> str | None:
    """The first problem of the names among ``params`` (a parsed query string, ``{name: [values]}``), or
    ``None``; an empty value is a problem too."""
    for kind in NAMED_PARAMETERS:
        for value in params.get(kind, ()):
            problem = name_problem(kind, value)
            if problem:
                return problem
    return None


def upload_name_problem(filename: str | None) -> str | None:
    """Why an uploaded label file's name is refused (not ``.nii`` / ``.nii.gz``), or ``None``."""
    if not filename:
        return "the uploaded label has no file name; send a .nii.gz or .nii label map"
    if not filename.lower().endswith(LABEL_EXTENSIONS):
        return f"label file {filename!r}: unsupported type; a label is a NIfTI label map (.nii.gz or .nii)"
    return None


def label_file_problem(path: str, filename: str, study_shape: Sequence[int] | None = None) -> str | None:
    """Why the uploaded label at ``path`` (sent as ``filename``) cannot be stored for training, or ``None``: it
    must be a NIfTI file nibabel reads in full, a 3D map (trailing axes of size 1 allowed) of integer values,
    whose shape is ``study_shape`` (the study's first three axes) when given."""
    import nibabel as nib
    import numpy as np

    problem = upload_name_problem(filename)
    if problem:
        return problem
    try:
        data = np.asanyarray(nib.load(path).dataobj)
    except Exception as e:  # nibabel, gzip and OS errors all mean "not a readable NIfTI"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"label file {filename!r}: not a readable NIfTI file ({type(e).__name__}: {first})"
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        return f"label file {filename!r}: expected a 3D label map, got shape {tuple(data.shape)}"
    if not np.issubdtype(data.dtype, np.integer) and not np.array_equal(data, np.round(data)):
        return f"label file {filename!r}: non-integer values; a label map holds integer labels"
    if study_shape is not None and tuple(data.shape) != tuple(study_shape)[:3]:
        return f"label file {filename!r}: shape {tuple(data.shape)} does not match the study's {tuple(study_shape)[:3]}"
    return None


class RefuseBadNames:
    """A starlette route, put first in the server's routes, that answers every request under ``prefix`` (the
    ``/datastore`` endpoints) whose ``image``, ``id``, ``label`` or ``tag`` is not a datastore name
    (:func:`query_problem`) with HTTP 400 and the reason; it matches no other request, which go on to the stock
    routes unchanged."""

    def __init__(self, prefix: str):
        self.prefix = prefix.rstrip("/")

    def problem(self, scope) -> str | None:
        if scope.get("type") != "http":
            return None
        path = scope.get("path", "")
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            return None
        query = scope.get("query_string", b"").decode("latin-1")
        return query_problem(parse_qs(query, keep_blank_values=True))

    def matches(self, scope):
        from starlette.routing import Match

        problem = self.problem(scope)
        return (Match.FULL, {"datastore_name_problem": problem}) if problem else (Match.NONE, {})

    async def handle(self, scope, receive, send):
        from starlette.responses import JSONResponse

        response = JSONResponse({"detail": scope["datastore_name_problem"]}, status_code=400)
        await response(scope, receive, send)

    async def __call__(self, scope, receive, send):
        await self.handle(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params):
        from starlette.routing import NoMatchFound

        raise NoMatchFound(name, path_params)
