"""One error policy: the library raises, the entry points print one line and exit with status 1.

Every error a user can fix (a bad manifest, a refused export, a changed checksum, a failed scan, a fold
that did not train) is a :class:`UserError`. The library raises it, never prints and exits; the two kinds of
entry point turn it into lines on stderr and exit status 1:

- ``monai-ms <verb>`` (:func:`monai_ms.cli.main`): ``monai-ms <verb>: <message>``, no traceback;
- ``python -m monai.bundle run ...``: the config steps call :func:`stop_or_raise`, which prints the message
  (and what to do) and exits when the bundle command line is running, and raises otherwise, so Python
  callers (a ``ConfigParser``, a notebook) get the exception.

The specific errors keep their built-in bases (``ManifestError`` is still a ``ValueError``), so existing
``except ValueError`` code keeps working. This module imports no other monai_ms module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

__all__ = ["UserError", "running_bundle_cli", "stop_or_raise"]


class UserError(Exception):
    """A problem with the user's input or request, stated in words they can act on (no traceback needed)."""


def running_bundle_cli() -> bool:
    """Whether this process is ``python -m monai.bundle ...`` (the bundle command line), not Python code."""
    first = sys.argv[:1]
    return any(Path(arg).parts[-2:] == ("bundle", "__main__.py") for arg in first) or "monai.bundle" in first


def stop_or_raise(error: BaseException, cli_text: str | None = None) -> NoReturn:
    """Under the bundle command line print ``cli_text`` (default: the error) and exit 1; otherwise raise ``error``.

    Args:
        error: the exception (usually a :class:`UserError`).
        cli_text: what the command line prints instead of ``str(error)``, e.g. the message and what to do next.

    Raises:
        SystemExit: status 1, under ``python -m monai.bundle``.
        BaseException: ``error`` itself, elsewhere.
    """
    if running_bundle_cli():
        print(str(error) if cli_text is None else cli_text, file=sys.stderr)
        raise SystemExit(1) from None
    raise error
