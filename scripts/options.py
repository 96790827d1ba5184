"""The command-line options of the configs, checked in one place.

``python -m monai.bundle run`` hands every ``--id value`` to the configs as Fire parsed it: ``false`` arrives as
the string ``'false'`` (truthy), and an id that no config defines is added silently and never read. Two guards:

- :func:`as_bool` is the one parser of a boolean id. The configs read every top-level boolean id through it
  (``"$scripts.options.as_bool(@tta, 'tta')"``), so ``true/false/yes/no/1/0`` in any case mean what they say.
- :func:`check_command_line` runs when ``import scripts`` happens inside ``python -m monai.bundle run`` (the
  configs' first import, before any component is built). It reads the command line's config files and stops
  the run with one ``error: ...`` line for an override that names no id of them (with the closest id), a boolean
  id given anything but a boolean word, and a value that :data:`VALUE_CHECKS` rejects. It also installs
  :func:`report_case_error`, so a bad case that ends the run (a ``CaseError`` naming the file, e.g. a label value
  outside the layout's convention in a training set) is one ``error: ...`` line, not a traceback.

Values the configs themselves hold are trusted; the checks here are for what a user types.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import inspect
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scripts.transforms import CaseError

BOOLEAN_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
"""The words a boolean id accepts (any case), and what they mean."""
SEPARATOR = "#"


def fail(message: str) -> SystemExit:
    """``SystemExit`` printing ``error: <message>`` as one line (the bundle's error style)."""
    return SystemExit(f"error: {' '.join(str(message).split())}")


def as_bool(value: Any, name: str) -> bool:
    """``value`` of the boolean id ``name`` as a ``bool``: ``True``/``False``, ``1``/``0`` or one of
    :data:`BOOLEAN_WORDS` in any case; anything else is :func:`fail` naming ``--name``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in BOOLEAN_WORDS:
        return BOOLEAN_WORDS[value.strip().lower()]
    raise fail(f"--{name} {value!r}: not a boolean (use true/false, yes/no or 1/0)")


def optional_path(value: Any, name: str) -> str | None:
    """``value`` of the path id ``name``, or ``None`` for "no file": ``null``, ``""`` or ``none`` in any case (the
    command line cannot pass ``None``: ``monai.bundle run`` drops overrides whose value is ``None``)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise fail(f"--{name} {value!r}: not a path (or none)")
    return str(value)


def label_triple(value: Any, name: str = "brats_labels") -> list[int]:
    """``value`` as the label values ``[necrotic, oedema, enhancing]``: three distinct positive integers (two
    classes written with one value could never be told apart again); anything else is :func:`fail`."""
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise fail(f"--{name} {value!r}: give three label values [necrotic, oedema, enhancing], e.g. [1,2,4]")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise fail(f"--{name} {value!r}: label values must be positive integers")
    if len(set(value)) != 3:
        raise fail(f"--{name} {value!r}: the three label values must differ (one value would mean two classes)")
    return list(value)


def overlap_fraction(value: Any, name: str = "overlap") -> float:
    """``value`` as a sliding-window overlap: a number in ``[0, 1)`` (at 1 the windows would never advance)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise fail(f"--{name} {value!r}: the overlap must be a number from 0 up to (not including) 1")
    return float(value)


def window_shape(value: Any, name: str = "window_size") -> list[int]:
    """``value`` as a sliding-window size: three integers, each positive or ``-1`` (the whole image)."""
    ok = isinstance(value, (list, tuple)) and len(value) == 3
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and (v > 0 or v == -1) for v in value):
        raise fail(
            f"--{name} {value!r}: give three sizes, each a positive integer or -1 (whole image), e.g. [96,96,96]"
        )
    return list(value)


def window_size(value: Any, network: Any, name: str = "window_size") -> list[int]:
    """:func:`window_shape` of ``value``, each positive size a multiple of what ``network`` needs along that
    dim (its ``divisors``: the product of the strides; a network without them is not checked)."""
    sizes = window_shape(value, name)
    divisors = list(getattr(network, "divisors", None) or [1] * len(sizes))
    if any(s > 0 and s % d for s, d in zip(sizes, divisors)):
        raise fail(f"--{name} {value}: {type(network).__name__} needs each size to be -1 or a multiple of {divisors}")
    return sizes


def positive_int(value: Any, name: str) -> int:
    """``value`` as an integer of at least 1; anything else is :func:`fail`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(f"--{name} {value!r}: give a whole number of at least 1")
    return value


def prefetch_workers(num_workers: Any, num_cases: int) -> int:
    """The ``DataLoader`` workers of an inference pass over ``num_cases`` cases: ``num_workers``, but none for a
    single case, which has no network time to hide its loading behind (a worker's start and the transfer of the
    preprocessed case cost 0.7-1.2 s of a 13 s command, docs/benchmarks.md "End to end")."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise fail(f"--num_workers {num_workers!r}: give a whole number of at least 0")
    return num_workers if num_cases > 1 else 0


VALUE_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "brats_labels": label_triple,
    "overlap": overlap_fraction,
    "window_size": window_shape,
    "tta_flips_per_call": positive_int,
}
"""Checks of the value of a top-level id given on the command line (raise :func:`fail` when it is wrong)."""


# ---------------------------------------------------------------------------------------- the command line
def bundle_run_arguments(argv: Sequence[str] | None = None) -> list[str] | None:
    """The arguments after ``run`` when ``argv`` (default ``sys.argv``) is ``python -m monai.bundle run ...``,
    else ``None``."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or Path(argv[0]).parts[-3:] != ("monai", "bundle", "__main__.py") or argv[1] != "run":
        return None
    return argv[2:]


def parse_flags(arguments: Sequence[str]) -> dict[str, Any]:
    """``--name value`` / ``--name=value`` / bare ``--name`` pairs parsed as Fire does (``-`` in a name is
    ``_``; a value is Fire's literal); positional arguments are left out."""
    from fire.parser import DefaultParseValue

    flags, i = {}, 0
    while i < len(arguments):
        token = arguments[i]
        i += 1
        if not token.startswith("--") or token == "--":
            continue
        name, eq, value = token[2:].partition("=")
        if not eq:
            if i < len(arguments) and not arguments[i].startswith("--"):
                value, i = arguments[i], i + 1
            else:
                value = "True"
        flags[name.replace("-", "_")] = DefaultParseValue(value)
    return flags


def workflow_parameters() -> set[str]:
    """The names ``monai.bundle run`` takes for itself (not overrides of config ids)."""
    from monai.bundle import ConfigWorkflow
    from monai.bundle import scripts as bundle_scripts

    names = set(inspect.signature(bundle_scripts.run).parameters)
    names |= set(inspect.signature(ConfigWorkflow.__init__).parameters)
    return (names | {"workflow_name"}) - {"self", "override"}


def tracking_ids(tracking: Any) -> set[str]:
    """The ids a ``--tracking`` setting reads from the overrides (``mlflow``: ``tracking_uri``, ...)."""
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    settings = DEFAULT_EXP_MGMT_SETTINGS.get(tracking) if isinstance(tracking, str) else tracking
    return set(settings.get("configs", {})) if isinstance(settings, dict) else set()


def all_ids(config: Any, prefix: str = "") -> list[str]:
    """Every id of ``config`` (nested ids joined with ``#``)."""
    if isinstance(config, dict):
        items = config.items()
    elif isinstance(config, list):
        items = enumerate(config)
    else:
        return []
    ids = []
    for key, value in items:
        child = f"{prefix}{SEPARATOR}{key}" if prefix else str(key)
        ids += [child, *all_ids(value, child)]
    return ids


def takes_argument(component: dict, argument: str) -> bool:
    """Whether the ``_target_`` of ``component`` accepts the keyword ``argument`` (``True`` when the target
    cannot be located here, its constructor decides)."""
    from pydoc import locate

    from monai.bundle import ComponentLocator

    target = component.get("_target_")
    if not isinstance(target, str) or target.startswith("$"):
        return True
    found = ComponentLocator().get_component_module_name(target)
    module = found[0] if isinstance(found, list) and found else found
    obj = locate(f"{module}.{target}" if isinstance(module, str) else target)
    if obj is None:
        return True
    try:
        parameters = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return True
    return argument in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def is_known(parser, name: str) -> bool:
    """Whether the override ``name`` names an id of the config held by ``parser``, or an argument of one of
    its components (``--train#checkpoint#n_saved``)."""
    name = name.replace("::", SEPARATOR)
    if name in parser:
        return True
    parent, _, argument = name.rpartition(SEPARATOR)
    component = parser.get(parent) if parent and parent in parser else None
    return isinstance(component, dict) and "_target_" in component and takes_argument(component, argument)


def unknown_override(name: str, ids: Sequence[str]) -> SystemExit:
    """The error for an override naming no id, with the closest id of ``ids`` when one is close."""
    close = difflib.get_close_matches(name, ids, n=1, cutoff=0.6)
    hint = f"; did you mean --{close[0]}?" if close else ""
    return fail(f"--{name}: no such id in the configs{hint}")


def boolean_ids(config: Any) -> set[str]:
    """The ids that ``config`` reads through :func:`as_bool` (``as_bool(@amp, 'amp')``): boolean ids whose own
    value is an expression (``amp`` follows the device)."""
    return set(re.findall(r"as_bool\(@([\w#]+),", json.dumps(config)))


def check_value(parser, name: str, value: Any) -> None:
    """Check the override ``--name value`` against the config's own value of ``name`` (a boolean, or an id read
    through :func:`as_bool`) and :data:`VALUE_CHECKS`."""
    default = parser.get(name.replace("::", SEPARATOR))
    if isinstance(default, bool) or name in boolean_ids(parser.get()):
        flag = as_bool(value, name)
        if SEPARATOR in name and not isinstance(value, (bool, int)):
            raise fail(f"--{name} {value!r}: a component argument is passed as written; write {flag} instead")
    if name in VALUE_CHECKS:
        VALUE_CHECKS[name](value, name)


def check_overrides(config_file: Any, meta_file: Any, overrides: dict[str, Any]) -> None:
    """:func:`fail` at the first override of ``overrides`` that names no id of the merged ``config_file``
    (and ``meta_file``, under ``_meta_``) or whose value :func:`check_value` rejects."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_file)
    if meta_file is not None:
        parser.read_meta(meta_file)
    ids = all_ids(parser.get())
    for name, value in overrides.items():
        if not is_known(parser, name):
            raise unknown_override(name, ids)
        check_value(parser, name, value)


def case_error_of(error: BaseException | None) -> CaseError | None:
    """The :class:`~scripts.transforms.CaseError` that ``error`` is or was raised from (MONAI wraps it in
    ``RuntimeError`` errors: applying a transform, instantiating a component, evaluating an expression)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, CaseError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def report_case_error(exc_type, exc, tb, previous=sys.__excepthook__) -> None:
    """``sys.excepthook`` of a bundle run: an uncaught error raised from a ``CaseError`` is printed as one
    ``error: <file>: <problem>`` line; any other error goes to ``previous`` (the traceback)."""
    found = case_error_of(exc)
    if found is None:
        previous(exc_type, exc, tb)
    else:
        print(f"error: {' '.join(str(found).split())}", file=sys.stderr)


PLUGIN_NOISE_LOGGERS = ("monai.data.nvimgcodec_pydicom_plugin",)
"""Third-party loggers whose warnings no user can act on: nvImageCodec (a GPU DICOM decoder plugin of pydicom)
is absent on most machines, and MONAI warns about it at every image loader it builds."""
PLUGIN_NOISE_WARNINGS = ("NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register",)
"""Starts of third-party ``warnings.warn`` messages silenced for the same reason."""


def quiet_third_party() -> None:
    """Silence :data:`PLUGIN_NOISE_LOGGERS` below errors and filter :data:`PLUGIN_NOISE_WARNINGS` (``import
    scripts`` calls it; ``DataLoader`` workers inherit it). pydicom's own decoders are used, as before."""
    for name in PLUGIN_NOISE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for message in PLUGIN_NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message))


def check_tracking(tracking: Any) -> None:
    """:func:`fail` when ``--tracking mlflow`` is asked for and mlflow (an optional extra,
    ``requirements-tracking.txt``) is not installed."""
    if tracking == "mlflow" and importlib.util.find_spec("mlflow") is None:
        raise fail(
            "--tracking mlflow needs the mlflow package: pip install -c constraints.txt -r requirements-tracking.txt"
        )


def skip_teardown(argv: Sequence[str] | None = None) -> None:
    """The last step of a successful ``python -m monai.bundle run`` of inference: flush the logs and the output
    and end the process with code 0 at once, skipping the interpreter's teardown of everything ``import monai``
    loaded (1-2 s measured, its ``atexit`` handlers take milliseconds; docs/benchmarks.md, "End to end").

    It returns (the usual exit follows) anywhere else: outside the command line (tests, notebooks,
    ``monai.bundle.create_workflow``), with ``--tracking`` (MONAI ends the tracked run in ``finalize``), or when a
    config of the command has a ``finalize`` step. Every output is complete by then (atomic writes, the
    ``DataLoader`` workers ended with the epoch)."""
    arguments = bundle_run_arguments(argv)
    if arguments is None:
        return
    flags = parse_flags(arguments)
    if flags.get("args_file"):
        from monai.bundle import ConfigParser

        flags = {**ConfigParser.load_config_file(flags["args_file"]), **flags}
    if flags.get("tracking") or flags.get("config_file") is None:
        return
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(flags["config_file"])
    if "finalize" in parser:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


EXPORT_COMMANDS = ("ckpt_export", "onnx_export", "trt_export")
"""The ``python -m monai.bundle`` commands that write an exported network to ``--filepath``."""


def _as_paths(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) and value.startswith("["):
        import ast

        value = ast.literal_eval(value)
    return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def check_export_target(argv: Sequence[str] | None = None) -> None:
    """When ``argv`` is ``python -m monai.bundle ckpt_export/onnx_export/trt_export ...``: :func:`fail` before
    anything is written if ``--filepath`` is one of the command's input files (``--ckpt_file``, a config or the
    meta file), e.g. ``--filepath models/model.pt --ckpt_file models/model.pt``."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or Path(argv[0]).parts[-3:] != ("monai", "bundle", "__main__.py"):
        return
    if argv[1] not in EXPORT_COMMANDS:
        return
    flags = parse_flags(argv[2:])
    target = flags.get("filepath")
    if not target or not Path(str(target)).exists():
        return
    for name in ("ckpt_file", "config_file", "meta_file"):
        for path in _as_paths(flags.get(name)):
            if Path(path).exists() and Path(path).samefile(str(target)):
                raise fail(f"--filepath {target} would overwrite the input --{name} {path}; export to another file")


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """When ``argv`` is ``python -m monai.bundle run ...``: :func:`check_overrides` of its overrides (its flags,
    and those of ``--args_file``, less the names ``run`` takes itself and those ``--tracking`` reads), and
    :func:`report_case_error` as ``sys.excepthook``. For the export commands: :func:`check_export_target`."""
    check_export_target(argv)
    arguments = bundle_run_arguments(argv)
    if arguments is None:
        return
    sys.excepthook = functools.partial(report_case_error, previous=sys.excepthook)
    flags = parse_flags(arguments)
    if flags.get("args_file"):
        from monai.bundle import ConfigParser

        flags = {**ConfigParser.load_config_file(flags["args_file"]), **flags}
    if flags.get("config_file") is None:
        return  # monai.bundle reports the missing config itself
    check_tracking(flags.get("tracking"))
    own = workflow_parameters() | tracking_ids(flags.get("tracking"))
    overrides = {k: v for k, v in flags.items() if k not in own}
    check_overrides(flags["config_file"], flags.get("meta_file"), overrides)
