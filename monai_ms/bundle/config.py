"""Helpers called from bundle configs: where the bundle is, and which overrides are known.

Two MONAI bundle pitfalls are handled here rather than in each config:

- ``bundle_root: "."`` is the working directory, not the bundle, but the documented usage line runs
  from the repository root. :func:`bundle_root` finds the folder of the config file being run.
- A mistyped command-line override (``--epoch 3`` for ``--epochs 3``) silently adds a new key.
  :func:`check_overrides` refuses top-level keys that none of the bundle's config files defines.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["bundle_root", "check_overrides", "override_args", "running_workflow"]


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """``--key value`` arguments of a ``python -m monai.bundle run`` command line, one pair per override.

    python-fire reads each value as a Python literal, so a non-string value is written as one (``True``,
    ``None``, ``[80, 96, 80]``): JSON's ``true`` would arrive as the string ``"true"``, which
    :func:`check_overrides` refuses. A string is passed as it is.

    Examples:
        >>> override_args({"augment": False, "roi_size": [80, 96, 80], "ckpt_dir": "runs/a"})
        ['--augment', 'False', '--roi_size', '[80, 96, 80]', '--ckpt_dir', 'runs/a']
    """
    args: list[str] = []
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else repr(value)]
    return args


def running_workflow() -> Any | None:
    """The ``monai.bundle.ConfigWorkflow`` whose config is being parsed, found on the call stack."""
    from monai.bundle import ConfigWorkflow

    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, ConfigWorkflow):
            return candidate
        frame = frame.f_back
    return None


def _config_files_from_argv(argv: list[str]) -> list[str]:
    for i, arg in enumerate(argv):
        value = None
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        if value is not None:
            value = value.strip()
            if value.startswith("["):  # "['a.json','b.json']" as python-fire passes lists
                return [v.strip().strip("'\"") for v in value.strip("[]").split(",") if v.strip()]
            return [v for v in value.split(",") if v]
    return []


def _configs_dir() -> Path | None:
    workflow = running_workflow()
    if workflow is not None:
        return Path(workflow.config_root_path)
    files = _config_files_from_argv(sys.argv)
    return Path(files[0]).parent if files else None


def bundle_root(default: str | os.PathLike | None = None) -> str:
    """The bundle folder of the config being run (the parent of its ``configs/`` folder).

    Looked up, in order: the running ``ConfigWorkflow`` (``python -m monai.bundle run`` or the
    Python API), a ``--config_file`` argument, then ``default`` relative to the working directory.

    Args:
        default: fallback, e.g. ``"bundles/edss"``.

    Raises:
        FileNotFoundError: nothing found; the message says to pass ``--bundle_root``.

    Examples:
        In a config: ``"bundle_root": "$monai_ms.bundle.bundle_root('bundles/edss')"``.
    """
    configs = _configs_dir()
    if configs is not None:
        root = configs.parent if configs.name == "configs" else configs
        return str(root.resolve())
    if default is not None and Path(default).is_dir():
        return str(Path(default).resolve())
    raise FileNotFoundError(
        f"cannot tell where the bundle is (no config file on record, {default!r} not found from {os.getcwd()}); "
        "pass --bundle_root PATH"
    )


def _defaults(configs_dir: Path) -> dict[str, Any]:
    """Top-level keys defined by the bundle's config files, with their values in the files."""
    defaults: dict[str, Any] = {}
    for path in sorted(configs_dir.glob("*.json")):
        if path.name == "metadata.json":
            continue
        try:
            content = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(content, dict):
            for key, value in content.items():
                defaults.setdefault(key, value)
    return defaults


def check_overrides(extra_allowed: tuple[str, ...] = ()) -> bool:
    """Refuse top-level config keys that no config file of the bundle defines (a mistyped override),
    a switch given as the string ``"true"``/``"false"`` (python-fire reads only ``True``/``False``
    as booleans, so ``--amp false`` would silently switch AMP on), and the string ``"null"`` anywhere
    (MONAI drops ``None`` overrides, so ``null`` would arrive as a string; no config file holds it).

    Called first in each bundle's ``initialize`` list. Outside a ``ConfigWorkflow`` (e.g. a bare
    ``ConfigParser``) it does nothing.

    Args:
        extra_allowed: keys accepted although no file defines them.

    Raises:
        ValueError: one line per unknown key, with the closest known keys.

    Returns:
        True when every key is known.
    """
    workflow = running_workflow()
    if workflow is None:
        return True
    defaults = _defaults(Path(workflow.config_root_path))
    known = set(defaults) | set(extra_allowed) | {"_meta_", "bundle_root"} | _tracking_keys()
    config = workflow.parser.config
    lines = []
    for key in sorted(set(config) - known):
        close = difflib.get_close_matches(key, sorted(known), n=3)
        hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else ""
        lines.append(f"unknown override --{key}: no config in {workflow.config_root_path} defines it{hint}")
    for key, default in defaults.items():
        value = config.get(key)
        if isinstance(default, bool) and isinstance(value, str) and value.strip().lower() in ("true", "false"):
            lines.append(f"--{key} must be True or False (capitalised), got the string {config[key]!r}")
    for path in _null_strings(config):
        # MONAI's command line drops None overrides, so no spelling of "no value" reaches the config
        lines.append(f"--{path}: the command line cannot set a value to null (the string 'null' is not one); see the bundle's docs")
    if lines:
        raise ValueError("\n".join(lines))
    return True


def _tracking_keys() -> set[str]:
    """Top-level keys that ``--tracking mlflow`` adds (``tracking_uri``, ``experiment_name``, ...): also valid overrides."""
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    keys: set[str] = set()
    for settings in DEFAULT_EXP_MGMT_SETTINGS.values():
        keys |= set(settings.get("configs", {})) - set(settings.get("handlers_id", {}))
    return keys


def _null_strings(value: Any, path: str = "") -> list[str]:
    """``#``-joined paths of values that are the string ``"null"`` (any case)."""
    if isinstance(value, str):
        return [path] if value.strip().lower() == "null" else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return [found for key, item in items for found in _null_strings(item, f"{path}#{key}" if path else str(key))]
