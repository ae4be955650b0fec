#!/usr/bin/env python
"""Sanity checks for the held-out cohort; writes CHECKS.md and preview.png.

Reads only the generated cohort (and the hidden *_truth folder for the WM map
and brain/lesion volumes).  Usage: python checks.py --cohort cohort --md CHECKS.md --png preview.png
"""
import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.processing import resample_from_to
from scipy import ndimage as ndi
from scipy.stats import mannwhitneyu, pearsonr, spearmanr


def auc(pos, neg):
    u = mannwhitneyu(pos, neg).statistic
    return u / (len(pos) * len(neg))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cohort", default="cohort")
    ap.add_argument("--md", default="CHECKS.md")
    ap.add_argument("--png", default="preview.png")
    a = ap.parse_args()
    C = a.cohort.rstrip("/")
    meta = pd.read_csv(f"{C}/metadata.csv")
    truth = pd.read_csv(f"{C}_truth/truth.csv")
    L = ["# Held-out cohort sanity checks", ""]
    L += [f"metadata.csv: {len(meta)} sessions, {meta.Patient_ID.nunique()} patients, columns {list(meta.columns)}",
          f"MRI_ID unique: {meta.MRI_ID.is_unique}; sessions per scanner: {meta.MR_System.value_counts().to_dict()}",
          f"Sex (patients): {meta.drop_duplicates('Patient_ID').Sex.value_counts().to_dict()}; "
          f"Age range {meta.Age_at_Scan.min()}-{meta.Age_at_Scan.max()}", ""]

    # --- geometry for one session per scanner (first 3 scanners) ---
    picks = meta.drop_duplicates("MR_System").sort_values("MR_System").MRI_ID.tolist()
    L += ["## Geometry (one session per scanner)", "",
          "| MRI_ID | scanner | image | shape | voxel (mm) | axcodes | dtype |", "|---|---|---|---|---|---|---|"]
    geo = []
    for mid in picks:
        sc = meta.set_index("MRI_ID").MR_System[mid]
        for kind, path in (("T1", f"{C}/T1/{mid}_T1_preprocessed.nii.gz"), ("T2", f"{C}/T2/{mid}_T2_preprocessed.nii.gz"),
                           ("mask", f"{C}/masks/{mid}_lesion.nii.gz")):
            im = nib.load(path)
            L.append(f"| {mid} | {sc} | {kind} | {im.shape} | {tuple(round(float(z), 2) for z in im.header.get_zooms())} "
                     f"| {''.join(nib.aff2axcodes(im.affine))} | {im.get_data_dtype()} |")
    L += ["", "T2 resampled onto the T1 grid (nibabel.processing.resample_from_to, linear); brain = nonzero voxels.",
          "Negative control: the same after shifting the T2 affine by 10 mm along x.", "",
          "| MRI_ID | Dice(T1 brain, T2->T1 brain) | Pearson(masks) | centroid distance (mm) | Dice with 10 mm shift "
          "| corr(T1, T2->T1) in brain |",
          "|---|---|---|---|---|---|"]
    for mid in picks:
        t1 = nib.load(f"{C}/T1/{mid}_T1_preprocessed.nii.gz")
        t2 = nib.load(f"{C}/T2/{mid}_T2_preprocessed.nii.gz")
        b1 = t1.get_fdata() > 0
        r2 = resample_from_to(t2, t1, order=1)
        d2 = r2.get_fdata()
        b2 = resample_from_to(nib.Nifti1Image((t2.get_fdata() > 0).astype(np.float32), t2.affine), t1, order=1).get_fdata() > 0.5
        dice = 2 * (b1 & b2).sum() / (b1.sum() + b2.sum())
        pr = np.corrcoef(b1.ravel().astype(float), b2.ravel().astype(float))[0, 1]
        c1 = t1.affine[:3, :3] @ np.argwhere(b1).mean(0) + t1.affine[:3, 3]
        c2v = np.argwhere(t2.get_fdata() > 0).mean(0)
        c2 = t2.affine[:3, :3] @ c2v + t2.affine[:3, 3]
        sh = t2.affine.copy()
        sh[0, 3] += 10
        bs = resample_from_to(nib.Nifti1Image((t2.get_fdata() > 0).astype(np.float32), sh), t1, order=1).get_fdata() > 0.5
        dsh = 2 * (b1 & bs).sum() / (b1.sum() + bs.sum())
        both = b1 & b2
        ci = np.corrcoef(t1.get_fdata()[both], d2[both])[0, 1]
        L.append(f"| {mid} | {dice:.3f} | {pr:.3f} | {np.linalg.norm(c1 - c2):.2f} | {dsh:.3f} | {ci:.2f} |")
        geo.append((mid, t1, r2))

    # --- lesion vs NAWM intensities ---
    L += ["", "## Lesion vs normal-appearing WM (all sessions with >= 20 lesion voxels)", "",
          "NAWM = hidden WM fraction >= 0.9 on the T1 grid, >= 3 voxels from any lesion voxel. "
          "T2 values: T2 resampled (linear) onto the T1 grid. Ratios = mean(lesion) / mean(NAWM) per session.", "",
          "| scanner | n | T1 ratio median (min-max) | T2 ratio median (min-max) | sessions with T1 lesion<NAWM | T2 lesion>NAWM |",
          "|---|---|---|---|---|---|"]
    rows = []
    for mid, sc in zip(meta.MRI_ID, meta.MR_System):
        m = nib.load(f"{C}/masks/{mid}_lesion.nii.gz")
        ma = np.asarray(m.dataobj) > 0
        if ma.sum() < 20:
            continue
        t1 = nib.load(f"{C}/T1/{mid}_T1_preprocessed.nii.gz")
        wm = np.asarray(nib.load(f"{C}_truth/{mid}_wm.nii.gz").dataobj) >= 90
        nawm = wm & ~ndi.binary_dilation(ma, iterations=3)
        d1 = t1.get_fdata()
        d2 = resample_from_to(nib.load(f"{C}/T2/{mid}_T2_preprocessed.nii.gz"), t1, order=1).get_fdata()
        rows.append(dict(sc=sc, r1=d1[ma].mean() / d1[nawm].mean(), r2=d2[ma].mean() / d2[nawm].mean()))
    R = pd.DataFrame(rows)
    for sc, g in R.groupby("sc"):
        L.append(f"| {sc} | {len(g)} | {g.r1.median():.2f} ({g.r1.min():.2f}-{g.r1.max():.2f}) | "
                 f"{g.r2.median():.2f} ({g.r2.min():.2f}-{g.r2.max():.2f}) | {(g.r1 < 1).sum()}/{len(g)} | {(g.r2 > 1).sum()}/{len(g)} |")

    # --- table-level correlations ---
    T = truth
    base = T[T.visit == 1]
    L += ["", "## Table-level relationships (truth.csv hidden variables)", ""]
    L.append(f"- Brain volume (GM+WM+deepGM+lesion, mL): median {T.brain_vol_mL.median():.0f}, "
             f"range {T.brain_vol_mL.min():.0f}-{T.brain_vol_mL.max():.0f}; ICV median {T.icv_mL.median():.0f}")
    male, female = base.Sex == "M", base.Sex == "F"
    L.append("- AUC of brain volume for sex (M positive), baseline sessions: "
             f"{auc(base.brain_vol_mL[male], base.brain_vol_mL[female]):.3f}; "
             f"ICV for sex: {auc(base.icv_mL[base.Sex == 'M'], base.icv_mL[base.Sex == 'F']):.3f}; "
             f"mean brain vol M/F = {base.brain_vol_mL[base.Sex == 'M'].mean() / base.brain_vol_mL[base.Sex == 'F'].mean():.3f}")
    r, p = pearsonr(T.Age_at_Scan, T.brain_vol_mL)
    rb, pb = pearsonr(T.Age_at_Scan, T.BPF)
    L.append(f"- Brain volume vs age: r = {r:.3f} (p={p:.1g}); BPF vs age: r = {rb:.3f} (p={pb:.1g})")
    L.append(f"- BPF: median {T.BPF.median():.3f}, range {T.BPF.min():.3f}-{T.BPF.max():.3f}")
    r, p = pearsonr(T.EDSS, T.lesion_vol_mL)
    rs, ps = spearmanr(T.EDSS, T.lesion_vol_mL)
    L.append(f"- EDSS vs lesion volume: Pearson r = {r:.3f} (p={p:.1g}), Spearman rho = {rs:.3f}; "
             f"EDSS vs BPF r = {pearsonr(T.EDSS, T.BPF)[0]:.3f}; EDSS vs age r = {pearsonr(T.EDSS, T.Age_at_Scan)[0]:.3f}")
    q = meta.EDSS.quantile([0.25, 0.5, 0.75])
    L.append(f"- EDSS: median {q[0.5]}, IQR {q[0.25]}-{q[0.75]}, range {meta.EDSS.min()}-{meta.EDSS.max()}; "
             f"counts {meta.EDSS.value_counts().sort_index().to_dict()}")
    L.append(f"- Lesion volume (mL): median {T.lesion_vol_mL.median():.2f}, range {T.lesion_vol_mL.min():.2f}-{T.lesion_vol_mL.max():.2f}; "
             f"mask volume median {T.lesion_mask_vol_mL.median():.2f}; lesion components median {T.n_lesion_components.median():.0f} "
             f"(range {T.n_lesion_components.min()}-{T.n_lesion_components.max()}); sessions with <0.2 mL: {(T.lesion_vol_mL < 0.2).sum()}")
    v2 = T[T.visit == 2].set_index("Patient_ID")
    v1 = T[T.visit == 1].set_index("Patient_ID").loc[v2.index]
    dt = v2.Age_at_Scan - v1.Age_at_Scan
    L.append(f"- Follow-up ({len(v2)} patients): dt {dt.min():.1f}-{dt.max():.1f} y; "
             f"lesion vol change median {np.median(v2.lesion_vol_mL - v1.lesion_vol_mL):+.2f} mL; "
             f"brain vol change median {np.median(v2.brain_vol_mL / v1.brain_vol_mL - 1) * 100:+.2f} %; "
             f"same sex {bool((v2.Sex == v1.Sex).all())}; same scanner {int((v2.MR_System == v1.MR_System).sum())}/{len(v2)}")
    L.append(f"- Head pose: rotation {T.rot_deg.min():.1f}-{T.rot_deg.max():.1f} deg, "
             f"|translation| max {np.abs(T[['trans_x', 'trans_y', 'trans_z']].values).max():.1f} mm")
    # --- file-level checks over all sessions ---
    mx, edge, outside, neg = {"T1": [], "T2": []}, [], 0, 0
    for mid in meta.MRI_ID:
        mk = np.asarray(nib.load(f"{C}/masks/{mid}_lesion.nii.gz").dataobj)
        for k in ("T1", "T2"):
            arr = np.asarray(nib.load(f"{C}/{k}/{mid}_{k}_preprocessed.nii.gz").dataobj)
            mx[k].append(int(arr.max()))
            neg += int((arr < 0).sum())
            if k == "T1":
                outside += int(((mk > 0) & (arr == 0)).sum())
            for ax in range(3):
                for e in (0, -1):
                    n = int((np.take(arr, e, ax) > 0).sum())
                    if n:
                        edge.append(f"{mid} {k} axis{ax} face{e}: {n} voxels")
    L += ["", "## File-level checks (all sessions)", "",
          f"- int16 max per scan: T1 {min(mx['T1'])}-{max(mx['T1'])}, T2 {min(mx['T2'])}-{max(mx['T2'])}; negative voxels: {neg}",
          f"- lesion-mask voxels outside the T1 brain: {outside}",
          f"- brain voxels on a field-of-view face: {edge if edge else 'none'}"]
    open(a.md, "w").write("\n".join(L) + "\n")
    print("\n".join(L))

    # --- preview ---
    fig, axs = plt.subplots(len(geo), 4, figsize=(13, 3.4 * len(geo)))
    for r, (mid, t1, r2) in enumerate(geo):
        c1 = nib.as_closest_canonical(t1)
        c2 = nib.as_closest_canonical(r2)
        mk = nib.as_closest_canonical(nib.load(f"{C}/masks/{mid}_lesion.nii.gz"))
        m = np.asarray(mk.dataobj)
        d1, d2 = c1.get_fdata(), c2.get_fdata()
        zmid = int(round(np.argwhere(d1 > 0)[:, 2].mean()))      # mid-axial: brain centroid
        zles = int(np.argmax(m.sum((0, 1)))) if m.sum() else zmid  # most lesion voxels
        sc = meta.set_index("MRI_ID").MR_System[mid]
        axs[r, 0].imshow(d1[:, :, zmid].T, cmap="gray", origin="lower")
        axs[r, 0].set_title(f"{mid} {sc}\nT1 mid-axial z={zmid}", fontsize=8)
        axs[r, 1].imshow(d2[:, :, zmid].T, cmap="gray", origin="lower")
        axs[r, 1].set_title("T2 resampled to T1 grid", fontsize=8)
        axs[r, 2].imshow(d1[:, :, zmid].T, cmap="gray", origin="lower")
        if m[:, :, zmid].any():
            axs[r, 2].contour(m[:, :, zmid].T, levels=[0.5], colors="r", linewidths=0.8)
        axs[r, 2].set_title("T1 + lesion mask (red)", fontsize=8)
        axs[r, 3].imshow(d2[:, :, zles].T, cmap="gray", origin="lower")
        if m[:, :, zles].any():
            axs[r, 3].contour(m[:, :, zles].T, levels=[0.5], colors="r", linewidths=0.8)
        axs[r, 3].set_title(f"T2 + mask, slice with most lesion z={zles}", fontsize=8)
        for ax in axs[r]:
            ax.axis("off")
    plt.tight_layout()
    plt.savefig(a.png, dpi=90)


if __name__ == "__main__":
    main()
