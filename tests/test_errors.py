"""The one error policy: user errors are one family; the library raises, the entry points print one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from bundle_runner import REPO

from monai_ms.bundle.cross_validation import CrossValidationError
from monai_ms.bundle.export import ExportError
from monai_ms.bundle.verify import ChecksumError, UnsafeArchiveError
from monai_ms.data.manifest import ManifestError
from monai_ms.data.templates import TemplateNotFoundError
from monai_ms.engines.inference.batch import BatchInferenceError
from monai_ms.engines.training.state import ResumeError
from monai_ms.errors import UserError, running_bundle_cli, stop_or_raise


@pytest.mark.parametrize(
    "error, builtin",
    [(ManifestError, ValueError), (ExportError, ValueError), (ChecksumError, ValueError), (UnsafeArchiveError, ValueError),
     (CrossValidationError, RuntimeError), (BatchInferenceError, RuntimeError), (ResumeError, RuntimeError),
     (TemplateNotFoundError, FileNotFoundError)],
)
def test_every_user_error_is_one_family_and_keeps_its_builtin_base(error, builtin):
    assert issubclass(error, UserError) and issubclass(error, builtin)


def test_the_library_raises_outside_the_bundle_command_line():
    assert not running_bundle_cli()
    with pytest.raises(ManifestError, match="bad row"):
        stop_or_raise(ManifestError("bad row"), "printed only on the command line")


def test_the_bundle_command_line_prints_the_text_and_exits_1(tmp_path):
    # the same call, with argv as python -m monai.bundle sets it
    code = (
        "import sys; sys.argv = ['" + str(tmp_path / "monai" / "bundle" / "__main__.py") + "']\n"
        "from monai_ms.errors import stop_or_raise\n"
        "from monai_ms.data.manifest import ManifestError\n"
        "stop_or_raise(ManifestError('bad row'), 'bad row\\n\\nstopped before training.')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr == "bad row\n\nstopped before training.\n" and "Traceback" not in result.stderr


def test_a_user_error_escaping_a_verb_is_one_line_and_exit_1(monkeypatch, capsys):
    import monai_ms.report.report_cli as report_cli
    from monai_ms.cli import main

    def failing(args):
        raise ManifestError("manifest.json: no entries in any split")

    monkeypatch.setattr(report_cli, "run", failing)
    assert main(["report", "somewhere"]) == 1
    assert capsys.readouterr().err == "monai-ms report: manifest.json: no entries in any split\n"
