"""Lesion reports across visits and within the brain: rigid registration of a follow-up to its baseline,
lesion matching and change classes (new, enlarging, stable, shrinking, resolved, merged, split), and the
McDonald location class of every lesion (periventricular, juxtacortical, infratentorial, deep white matter)."""

from __future__ import annotations

__all__: list[str] = []
