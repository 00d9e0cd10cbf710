import csv
import io

import pytest

from app.datasets.logic import (
    MAX_NAME_LENGTH,
    CsvLabel,
    CsvProblem,
    InvalidNameError,
    PathLabel,
    csv_safe_cell,
    infer_path_labels,
    normalise_name,
    parse_label_csv,
    strip_common_root,
    to_csv,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("cat", "cat"),
        ("  tabby   cat ", "tabby cat"),
        ("cafe\u0301", "caf\u00e9"),
        ("x" * MAX_NAME_LENGTH, "x" * 100),
    ],
)
def test_normalise_name_trims_collapses_and_composes(raw: str, expected: str) -> None:
    assert normalise_name(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty label"),
        ("   ", "empty label"),
        ("x" * (MAX_NAME_LENGTH + 1), "label is longer than 100 characters"),
        ("cat\ndog", "label contains control characters"),
        ("tab\there", "label contains control characters"),
        ("nul\x00", "label contains control characters"),
        ("line\u2028break", "label contains control characters"),
    ],
)
def test_normalise_name_refuses_bad_names(raw: str, reason: str) -> None:
    with pytest.raises(InvalidNameError) as raised:
        normalise_name(raw)
    assert raised.value.reason == reason


def test_single_root_folder_is_stripped_but_a_single_class_folder_is_kept() -> None:
    assert strip_common_root(["mydata/train/cat/x.jpg", "mydata/test/dog/y.jpg"]) == [
        "train/cat/x.jpg",
        "test/dog/y.jpg",
    ]
    assert strip_common_root(["a/b/cat/x.jpg", "a/b/dog/y.jpg"]) == ["cat/x.jpg", "dog/y.jpg"]
    assert strip_common_root(["cat/x.jpg", "cat/y.jpg"]) == ["cat/x.jpg", "cat/y.jpg"]
    assert strip_common_root(["train/cat/x.jpg", "train/dog/y.jpg"]) == ["train/cat/x.jpg", "train/dog/y.jpg"]
    assert strip_common_root(["root/cat/x.jpg", "root/y.jpg"]) == ["cat/x.jpg", "y.jpg"]
    assert strip_common_root(["root/cat/x.jpg", "z.jpg"]) == ["root/cat/x.jpg", "z.jpg"]
    assert strip_common_root(["only.jpg"]) == ["only.jpg"]


def test_labels_and_subsets_come_from_folders() -> None:
    paths = [
        "data/cat/a.jpg",
        "data/train/dog/b.jpg",
        "data/val/dog/c.jpg",
        "data/Valid/cat/d.jpg",
        "data/dev/cat/e.jpg",
        "data/TEST/bird/f.jpg",
        "data/test/g.jpg",
        "data/h.jpg",
        "data/cat/2021/march/i.jpg",
    ]
    assert infer_path_labels(paths) == {
        "data/cat/a.jpg": PathLabel(label="cat", subset=None),
        "data/train/dog/b.jpg": PathLabel(label="dog", subset="train"),
        "data/val/dog/c.jpg": PathLabel(label="dog", subset="dev"),
        "data/Valid/cat/d.jpg": PathLabel(label="cat", subset="dev"),
        "data/dev/cat/e.jpg": PathLabel(label="cat", subset="dev"),
        "data/TEST/bird/f.jpg": PathLabel(label="bird", subset="test"),
        "data/test/g.jpg": PathLabel(label=None, subset="test"),
        "data/h.jpg": PathLabel(label=None, subset=None),
        "data/cat/2021/march/i.jpg": PathLabel(label="cat", subset=None),
    }


def test_top_level_file_has_no_label() -> None:
    assert infer_path_labels(["x.jpg", "cat/y.jpg"]) == {
        "x.jpg": PathLabel(label=None, subset=None),
        "cat/y.jpg": PathLabel(label="cat", subset=None),
    }


def test_source_folders_name_the_distribution() -> None:
    paths = ["upload/phone/cat/a.jpg", "upload/render/train/dog/b.jpg", "upload/phone/c.jpg"]
    assert infer_path_labels(paths, source_folders=True) == {
        "upload/phone/cat/a.jpg": PathLabel(label="cat", subset=None, source="phone"),
        "upload/render/train/dog/b.jpg": PathLabel(label="dog", subset="train", source="render"),
        "upload/phone/c.jpg": PathLabel(label=None, subset=None, source="phone"),
    }


def test_a_single_source_folder_is_not_mistaken_for_a_root() -> None:
    assert infer_path_labels(["phone/cat/a.jpg", "phone/dog/b.jpg"], source_folders=True) == {
        "phone/cat/a.jpg": PathLabel(label="cat", subset=None, source="phone"),
        "phone/dog/b.jpg": PathLabel(label="dog", subset=None, source="phone"),
    }


def test_folder_name_that_is_not_a_valid_label_is_reported() -> None:
    long_name = "x" * 101
    result = infer_path_labels([f"{long_name}/a.jpg", "cat/b.jpg"])
    assert result[f"{long_name}/a.jpg"] == PathLabel(
        label=None, subset=None, problem="label is longer than 100 characters"
    )


UPLOAD = ["a.jpg", "b.jpg", "c.jpg", "cats/d.jpg", "one/same.jpg", "two/same.jpg"]


def test_csv_with_bom_and_source_column() -> None:
    data = "\ufefffilename,label,source\na.jpg, tabby  cat ,phone\nb.jpg,dog,\n".encode()
    result = parse_label_csv(data, upload_paths=UPLOAD)
    assert result.problems == []
    assert result.labels == {
        "a.jpg": CsvLabel(label="tabby cat", source="phone", row=2),
        "b.jpg": CsvLabel(label="dog", source=None, row=3),
    }


def test_csv_matches_paths_exactly_or_by_unique_base_name() -> None:
    data = b"Label,Filename\ncat,d.jpg\ndog,one/same.jpg\nbird,same.jpg\n"
    result = parse_label_csv(data, upload_paths=UPLOAD)
    assert set(result.labels) == {"cats/d.jpg", "one/same.jpg"}
    assert result.problems == [CsvProblem(4, "same.jpg matches 2 files in the upload; give its folder path")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"a.jpg,cat\nb.jpg,dog\n", "missing header row: expected filename,label[,source]"),
        (b"", "missing header row: expected filename,label[,source]"),
        (b"filename,class\na.jpg,cat\n", "header is missing the column(s): label"),
        (b"file,label\na.jpg,cat\n", "header is missing the column(s): filename"),
    ],
)
def test_csv_without_a_proper_header_is_refused(data: bytes, message: str) -> None:
    result = parse_label_csv(data, upload_paths=UPLOAD)
    assert result.labels == {}
    assert result.problems == [CsvProblem(1, message)]


def test_csv_that_is_not_utf8_is_refused() -> None:
    result = parse_label_csv("filename,label\na.jpg,café\n".encode("latin-1"), upload_paths=UPLOAD)
    assert result.problems == [CsvProblem(None, "the file is not UTF-8 text")]


@pytest.mark.parametrize(
    ("filename", "reason"),
    [
        ("../x.jpg", "name contains a '..' component"),
        ("/etc/x.jpg", "absolute path"),
        ("cats\\d.jpg", "name contains a backslash"),
        ("C:x.jpg", "name starts with a drive letter"),
    ],
)
def test_csv_filenames_that_are_unsafe_paths_are_refused(filename: str, reason: str) -> None:
    data = f"filename,label\na.jpg,cat\n{filename},dog\n"
    result = parse_label_csv(data, upload_paths=UPLOAD)
    assert list(result.labels) == ["a.jpg"]
    assert result.problems == [CsvProblem(3, reason)]


def test_conflicting_labels_drop_the_file_and_repeats_are_harmless() -> None:
    data = "filename,label\na.jpg,cat\nb.jpg,dog\na.jpg,dog\nb.jpg,dog\na.jpg,cat\n"
    result = parse_label_csv(data, upload_paths=UPLOAD)
    assert result.labels == {"b.jpg": CsvLabel(label="dog", source=None, row=3)}
    assert result.problems == [CsvProblem(4, "a.jpg is labelled 'dog' here but 'cat' in row 2; both rows ignored")]


def test_empty_labels_are_reported_with_their_row() -> None:
    data = "filename,label\na.jpg,\nb.jpg,   \nc.jpg\nd.jpg,cat\n"
    result = parse_label_csv(data, upload_paths=UPLOAD)
    assert list(result.labels) == ["cats/d.jpg"]
    assert result.problems == [CsvProblem(row, "empty label") for row in (2, 3, 4)]


def test_missing_files_are_reported_after_the_other_problems() -> None:
    data = "filename,label\nghost.jpg,cat\na.jpg,\n\nb.jpg,dog\n"
    result = parse_label_csv(data, upload_paths=UPLOAD)
    assert list(result.labels) == ["b.jpg"]
    assert result.problems == [CsvProblem(3, "empty label"), CsvProblem(2, "ghost.jpg is not in the upload")]


def test_csv_syntax_error_is_reported_and_ends_the_file() -> None:
    data = 'filename,label\na.jpg,cat\nb.jpg,"' + "x" * 200_000 + '"\nc.jpg,dog\n'
    result = parse_label_csv(data, upload_paths=UPLOAD)
    assert list(result.labels) == ["a.jpg"]
    (problem,) = result.problems
    assert problem.row == 3
    assert problem.message.startswith("unreadable CSV")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("cat", "cat"),
        ("a=b", "a=b"),
        (-3, -3),
        (0.5, 0.5),
        (None, ""),
    ],
)
def test_csv_safe_cell_neutralises_formulas(value: object, expected: object) -> None:
    assert csv_safe_cell(value) == expected


def test_to_csv_writes_safe_cells_that_read_back() -> None:
    text = to_csv(["filename", "label"], [["=cmd.jpg", "cat, tabby"], ["b.jpg", -1]])
    assert list(csv.reader(io.StringIO(text))) == [
        ["filename", "label"],
        ["'=cmd.jpg", "cat, tabby"],
        ["b.jpg", "-1"],
    ]
