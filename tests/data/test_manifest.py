"""Manifest build (CSV seed layout, column remapping, BIDS), read/write, load_datalist, schema, build CLI."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from _nifti_factory import manifest_for, write_bids_cohort, write_seed_cohort, write_session

from monai_ms.cli import main
from monai_ms.data.manifest import (
    ManifestError,
    build_from_bids,
    build_from_csv,
    load_datalist,
    manifest_schema,
    read_manifest,
    write_manifest,
)

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ build


def test_build_from_csv_seed_layout(tmp_path):
    csv_path, rows = write_seed_cohort(tmp_path / "cohort", n_subjects=4, no_mask=("sub-02-01",))
    entries = build_from_csv(csv_path, relative_to=tmp_path)
    assert [e["session"] for e in entries] == [r["MRI_ID"] for r in rows]  # every row, table order
    first = entries[0]
    assert first == {
        "subject": "P01",
        "session": "sub-01-01",
        "t1": "cohort/T1/sub-01-01_T1_preprocessed.nii.gz",
        "t2": "cohort/T2/sub-01-01_T2_preprocessed.nii.gz",
        "lesion": "cohort/masks/sub-01-01_lesion.nii.gz",
        "age": 27.0,
        "sex": "M",  # written "male" in the table
        "edss": 0.5,
        "scanner": "3T",
        "scan_date": rows[0]["Scan_Date"],
    }
    assert {e["sex"] for e in entries} == {"F", "M"}
    no_mask = [e["session"] for e in entries if "lesion" not in e]
    assert no_mask == ["sub-02-01"]  # optional mask: key only where the file exists


def test_build_keeps_a_row_whose_t1_is_missing_so_validation_reports_it(tmp_path):
    csv_path, _ = write_seed_cohort(tmp_path, n_subjects=2)
    (tmp_path / "T1" / "sub-02-01_T1_preprocessed.nii.gz").unlink()
    entries = build_from_csv(csv_path, relative_to=tmp_path)
    assert any(e["session"] == "sub-02-01" and e["t1"] == "T1/sub-02-01_T1_preprocessed.nii.gz" for e in entries)


def test_build_column_remapping_tsv_and_separate_image_root(tmp_path):
    images = tmp_path / "images"
    write_session(images / "anat" / "A1_t1.nii.gz", images / "anat" / "A1_t2.nii.gz")
    write_session(images / "anat" / "B1_t1.nii.gz", images / "anat" / "B1_t2.nii.gz")
    table = tmp_path / "tables" / "clinical.tsv"
    table.parent.mkdir()
    table.write_text("patient\tscan\tage_years\tgender\tedss_score\nA\tA1\t41\tFemale\t3\nB\tB1\t\tM\tNA\n")
    entries = build_from_csv(
        table,
        image_root=images,
        t1_pattern="anat/{scan}_t1.nii.gz",
        t2_pattern="anat/{session}_t2.nii.gz",  # canonical names work too
        lesion_pattern=None,
        columns={
            "subject": "patient",
            "session": "scan",
            "age": "age_years",
            "sex": "gender",
            "edss": "edss_score",
            "scanner": None,
            "scan_date": None,
        },
        relative_to=tmp_path,
    )
    assert entries == [
        {
            "subject": "A",
            "session": "A1",
            "t1": "images/anat/A1_t1.nii.gz",
            "t2": "images/anat/A1_t2.nii.gz",
            "age": 41.0,
            "sex": "F",
            "edss": 3.0,
        },
        {
            "subject": "B",
            "session": "B1",
            "t1": "images/anat/B1_t1.nii.gz",
            "t2": "images/anat/B1_t2.nii.gz",
            "sex": "M",
        },  # empty / NA cells leave the key out
    ]


def test_build_reads_a_semicolon_separated_export(tmp_path):
    csv_path, rows = write_seed_cohort(tmp_path, n_subjects=2)
    csv_path.write_text(csv_path.read_text().replace(",", ";"))  # a spreadsheet export in some locales
    entries = build_from_csv(csv_path)
    assert [e["session"] for e in entries] == [r["MRI_ID"] for r in rows] and entries[0]["edss"] == 0.5


def test_build_missing_column_lists_available_columns(tmp_path):
    csv_path, _ = write_seed_cohort(tmp_path, n_subjects=1)
    with pytest.raises(ManifestError) as err:
        build_from_csv(csv_path, columns={"edss": "EDSS_score"})
    message = str(err.value)
    assert "column 'EDSS_score' (for edss) not found" in message
    assert "available columns: Patient_ID, MRI_ID, MR_System, Number_of_Lesions" in message


def test_build_unknown_pattern_field_is_named(tmp_path):
    csv_path, _ = write_seed_cohort(tmp_path, n_subjects=1)
    with pytest.raises(ManifestError, match=r"t1 pattern 'T1/\{MRI\}.nii.gz' uses \{MRI\}, not a column"):
        build_from_csv(csv_path, t1_pattern="T1/{MRI}.nii.gz")


def test_build_reports_every_bad_row_with_its_line(tmp_path):
    csv_path, _ = write_seed_cohort(tmp_path, n_subjects=3)
    lines = csv_path.read_text().splitlines()
    lines[2] = lines[2].replace(",0.5,", ",11,")  # sub-01-02 EDSS (0.5 + 1 = 1.5 would be valid)
    lines[3] = lines[3].replace(",female,", ",X,")  # sub-02-01
    lines.append(lines[4])  # sub-03-01 again
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as err:
        build_from_csv(csv_path)
    message = str(err.value)
    assert (
        "metadata.csv line 4 (MRI_ID sub-02-01): Sex must be one of F, M, female, male (any case), got 'X'" in message
    )
    assert "metadata.csv line 6 (MRI_ID sub-03-01): duplicate MRI_ID sub-03-01 (also on line 5)" in message


def test_build_edss_message_names_line_column_and_value(tmp_path):
    csv_path, _ = write_seed_cohort(tmp_path, n_subjects=1)
    lines = csv_path.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("EDSS")] = "11"
    csv_path.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    with pytest.raises(
        ManifestError,
        match=r"metadata.csv line 2 \(MRI_ID sub-01-01\): EDSS must be in \[0, 10\] in steps of 0.5, got 11",
    ):
        build_from_csv(csv_path)


def test_build_from_bids(tmp_path):
    root = write_bids_cohort(tmp_path / "bids")
    entries = build_from_bids(root, relative_to=tmp_path)
    assert [e["session"] for e in entries] == ["sub-P01_ses-01", "sub-P01_ses-02", "sub-P02_ses-01"]
    first, _, last = entries
    assert first["subject"] == "sub-P01" and first["sex"] == "F" and first["age"] == 30.5 and first["edss"] == 2.0
    assert first["t1"] == "bids/sub-P01/ses-01/anat/sub-P01_ses-01_T1w.nii.gz"
    assert first["lesion"] == "bids/derivatives/lesions/sub-P01/ses-01/anat/sub-P01_ses-01_label-lesion_mask.nii.gz"
    assert last["sex"] == "M" and last["age"] == 45.0 and "edss" not in last and "lesion" not in last
    assert last["scanner"] == "3T" and last["scan_date"].startswith("2020-01-")


def test_build_from_bids_keeps_a_listed_session_without_images(tmp_path):
    root = write_bids_cohort(tmp_path / "bids")
    with (root / "sub-P02" / "sub-P02_sessions.tsv").open("a") as handle:
        handle.write("ses-02\t2021-01-01T10:00:00\t46\t4.0\t3T\n")
    entries = build_from_bids(root)
    [entry] = [e for e in entries if e["session"] == "sub-P02_ses-02"]
    assert entry["t1"].endswith("sub-P02/ses-02/anat/sub-P02_ses-02_T1w.nii.gz") and entry["edss"] == 4.0


def test_build_from_bids_without_sessions_and_unlisted_participant(tmp_path):
    root = tmp_path / "bids"
    write_session(root / "sub-A" / "anat" / "sub-A_T1w.nii.gz", root / "sub-A" / "anat" / "sub-A_T2w.nii.gz")
    (root / "participants.tsv").write_text("participant_id\tsex\tage\nsub-A\tF\t40\nsub-C\tM\t33\n")
    with pytest.raises(ManifestError, match="participants.tsv line 3: sub-C has no folder"):
        build_from_bids(root)
    (root / "participants.tsv").write_text("participant_id\tsex\tage\nsub-A\tF\t40\n")
    [entry] = build_from_bids(root, relative_to=root)
    assert entry == {
        "subject": "sub-A",
        "session": "sub-A",
        "t1": "sub-A/anat/sub-A_T1w.nii.gz",
        "t2": "sub-A/anat/sub-A_T2w.nii.gz",
        "age": 40.0,
        "sex": "F",
    }


# ------------------------------------------------------------------------------------------------ read / write


def test_read_manifest_names_file_and_position_of_bad_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"training": [\n {"subject": "P01",}\n]}')
    with pytest.raises(ManifestError, match=r"broken.json: not valid JSON: .* at line 2 column"):
        read_manifest(path)
    path.write_text('[{"subject": "P01"}]')
    with pytest.raises(ManifestError, match="must be a JSON object with 'training'"):
        read_manifest(path)
    path.write_text('{"training": {"subject": "P01"}}')
    with pytest.raises(ManifestError, match="'training' must be a list of entries"):
        read_manifest(path)
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.json")


def test_write_manifest_refuses_overwrite_and_inputs(tmp_path):
    manifest = {"training": [], "validation": [], "testing": []}
    path = write_manifest(manifest, tmp_path / "m.json")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_manifest(manifest, path)
    write_manifest(manifest, path, overwrite=True)
    with pytest.raises(ManifestError, match="this is an input file"):
        write_manifest(manifest, path, overwrite=True, inputs=[path])
    assert read_manifest(path)["training"] == []


# ------------------------------------------------------------------------------------------------ load_datalist


def test_load_datalist_resolves_every_image_path(tmp_path):
    manifest = manifest_for(tmp_path / "data")
    manifest["training"][0]["sex"] = "MALE"
    for entry in manifest["training"] + manifest["validation"] + manifest["testing"]:
        for key in ("t1", "t2", "lesion"):
            entry[key] = f"../data/{entry[key]}"  # the manifest lives in a sibling folder
    path = tmp_path / "manifests" / "cohort.json"
    write_manifest(manifest, path)
    training = load_datalist(path, "training", task="edss")
    assert len(training) == 3
    for entry in training:
        for key in ("t1", "t2", "lesion"):
            assert Path(entry[key]).is_absolute() and Path(entry[key]).is_file()
    assert training[0]["t1"] == str(tmp_path / "data" / "T1" / "sub-01-01_T1_preprocessed.nii.gz")
    assert training[0]["sex"] == "M" and isinstance(training[0]["age"], float)
    assert read_manifest(path)["training"][0]["t1"].startswith("../data/")  # the file itself is untouched


def test_load_datalist_raises_with_one_line_per_problem(tmp_path):
    manifest = manifest_for(tmp_path)
    manifest["training"][1]["edss"] = 10.5
    (tmp_path / manifest["training"][0]["t2"]).unlink()
    manifest["testing"][0]["edss"] = 42  # not in the requested split: not reported
    write_manifest(manifest, tmp_path / "manifest.json")
    with pytest.raises(ManifestError) as err:
        load_datalist(tmp_path / "manifest.json", "training", task="edss")
    lines = str(err.value).splitlines()
    assert lines[0].startswith("training[0] session sub-01-01: t2 T2/sub-01-01_T2_preprocessed.nii.gz: file not found")
    assert lines[1] == "training[1] session sub-01-02: edss must be in [0, 10] in steps of 0.5, got 10.5"
    assert lines[-1] == "checked 3 sessions, 9 files: 2 problems"


def test_load_datalist_folds(tmp_path):
    manifest = manifest_for(tmp_path)
    pool = manifest["training"] + manifest["validation"]
    for entry in pool:
        entry["fold"] = 0 if entry["subject"] in ("P01",) else 1
    manifest["training"], manifest["validation"] = [e for e in pool if e["fold"]], [e for e in pool if not e["fold"]]
    manifest["folds"] = [[e["session"] for e in pool if e["fold"] == k] for k in (0, 1)]
    write_manifest(manifest, tmp_path / "manifest.json")
    val = load_datalist(tmp_path / "manifest.json", "validation", fold=1)
    train = load_datalist(tmp_path / "manifest.json", "training", fold=1)
    assert {e["subject"] for e in val} == {"P02", "P03"} and {e["subject"] for e in train} == {"P01"}
    with pytest.raises(ManifestError, match="fold must be one of 0, 1, got 2"):
        load_datalist(tmp_path / "manifest.json", "validation", fold=2)


# ------------------------------------------------------------------------------------------------ schema


def test_schema_file_is_the_code_schema_and_accepts_the_example():
    schema = json.loads((REPO / "data_manifests" / "manifest.schema.json").read_text())
    assert schema == manifest_schema(), "regenerate data_manifests/manifest.schema.json (see its README)"
    jsonschema.Draft202012Validator.check_schema(schema)
    example = json.loads((REPO / "data_manifests" / "example_manifest.json").read_text())
    jsonschema.validate(example, schema)
    example["training"][0]["edss"] = 2.3
    with pytest.raises(jsonschema.ValidationError, match="multiple of 0.5"):
        jsonschema.validate(example, schema)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_build_writes_a_checked_split_manifest(tmp_path, capsys):
    csv_path, rows = write_seed_cohort(tmp_path / "cohort", n_subjects=6)
    out = tmp_path / "cohort" / "manifest.json"
    assert main(["manifest", "build", "--csv", str(csv_path), "--out", str(out), "--test", "0.2", "--val", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "1 of 8 sessions have no lesion" in printed and "0 problems" in printed
    manifest = read_manifest(out)
    jsonschema.validate(manifest, manifest_schema())
    sessions = [e["session"] for split in ("training", "validation", "testing") for e in manifest[split]]
    assert sorted(sessions) == sorted(r["MRI_ID"] for r in rows)
    assert manifest["training"][0]["t1"].startswith("T1/")  # relative to the manifest's folder
    assert manifest["format_version"] == 1 and manifest["created_by"].startswith("monai-ms ")
    assert main(["manifest", "build", "--csv", str(csv_path), "--out", str(out)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err


def test_cli_build_never_writes_onto_its_input(tmp_path, capsys):
    csv_path, _ = write_seed_cohort(tmp_path, n_subjects=3)
    before = csv_path.read_bytes()
    assert (
        main(["manifest", "build", "--csv", str(csv_path), "--out", str(csv_path), "--overwrite", "--test", "0"]) == 1
    )
    assert "input file" in capsys.readouterr().err
    assert csv_path.read_bytes() == before


def test_cli_build_with_a_bad_file_writes_nothing(tmp_path, capsys):
    csv_path, _ = write_seed_cohort(tmp_path, n_subjects=3)
    (tmp_path / "T2" / "sub-02-01_T2_preprocessed.nii.gz").write_bytes(b"\x1f\x8b broken")
    out = tmp_path / "manifest.json"
    assert main(["manifest", "build", "--csv", str(csv_path), "--out", str(out), "--test", "0"]) == 1
    printed = capsys.readouterr().out
    assert "session sub-02-01: t2 T2/sub-02-01_T2_preprocessed.nii.gz: unreadable NIfTI header" in printed
    assert "nothing written" in printed and not out.exists()


def test_cli_build_from_bids_with_column_free_defaults(tmp_path):
    root = write_bids_cohort(tmp_path / "bids")
    out = tmp_path / "bids.json"
    assert main(["manifest", "build", "--bids", str(root), "--out", str(out), "--test", "0", "--val", "0.4"]) == 0
    assert len(load_datalist(out, "training")) + len(load_datalist(out, "validation")) == 3


def test_cli_build_new_scans_puts_every_session_under_testing(tmp_path, capsys):
    csv_path, rows = write_seed_cohort(tmp_path / "cohort", n_subjects=3)
    out = tmp_path / "cohort" / "new_scans.json"
    assert main(["manifest", "build", "--csv", str(csv_path), "--out", str(out), "--new-scans", "--task", "edss_inference"]) == 0
    manifest = read_manifest(out)
    assert manifest["training"] == [] and manifest["validation"] == []
    assert sorted(e["session"] for e in manifest["testing"]) == sorted(r["MRI_ID"] for r in rows)
