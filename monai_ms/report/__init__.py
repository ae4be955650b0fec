"""Cohort report: one self-contained HTML page per evaluation or inference run folder."""

from __future__ import annotations

from monai_ms.report.html import ReportError, build_report, write_report

__all__ = ["ReportError", "build_report", "write_report"]
