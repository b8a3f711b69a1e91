"""``seriesflow process``, ``select`` and ``rules`` end to end, as a user runs them."""

from __future__ import annotations

import base64
import gc
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from seriesflow.cli import ONE_SHOT_MIDDLE_THRESHOLD, YOUNG_COLLECTION_THRESHOLD, app, main
from shared.dicom.metadata import json_schema
from shared.samples import write_brain_mr_study, write_ct_series

REPO = Path(__file__).resolve().parents[2]
CLARA_RULES = REPO / "examples" / "rules" / "clara-t1c.json"
SCHEMA_FILE = REPO / "shared" / "schemas" / "dicom-metadata.schema.json"
CLARA_ENV = (
    "NVIDIA_CLARA_IMAGE_FORMAT",
    "NVIDIA_CLARA_SELECTION_RULES_FILE",
    "NVIDIA_CLARA_SELECTION_RULES_BASE64",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CLARA_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def brain_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("brain")
    write_brain_mr_study(root, seed=7)
    return root


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def process(src: Path, out: Path, *extra: str) -> tuple[int, str]:
    return run("process", "--input", str(src), "--output", str(out), "--quiet", *extra)


def read(path: Path) -> Any:
    return json.loads(path.read_text())


def test_clara_example_selects_the_t1c_series_only(brain_study: Path, tmp_path: Path) -> None:
    code, output = process(brain_study, tmp_path, "--rules", str(CLARA_RULES), "--format", "nii")
    assert code == 0, output
    metadata = read(tmp_path / "dicom-metadata.json")
    assert isinstance(metadata, dict)
    by_description = {
        se["attributes"]["0008103E"]["Value"][0]: se
        for st in metadata["studies"]
        for se in st["series"]
    }
    t1c = by_description["T1c SE AX post-contrast"]["SeriesInstanceUID"]
    assert read(tmp_path / "selected-images.json") == {"T1C": {t1c: f"{t1c}.nii"}}


def test_outputs_have_the_documented_shapes(brain_study: Path, tmp_path: Path) -> None:
    code, output = process(brain_study, tmp_path, "--format", "nii.gz")
    assert code == 0, output
    metadata = read(tmp_path / "dicom-metadata.json")
    jsonschema.validate(metadata, json.loads(SCHEMA_FILE.read_text()))
    series_images = read(tmp_path / "series-images.json")
    assert isinstance(series_images, dict) and len(series_images) == 6
    for uid, image in series_images.items():
        assert image == f"{uid}.nii.gz" and (tmp_path / image).is_file()
    # empty rules: every converted series under its own UID
    selected = read(tmp_path / "selected-images.json")
    assert selected == {uid: {uid: image} for uid, image in series_images.items()}
    assert isinstance(metadata, dict)
    reasons = {
        n["code"] for st in metadata["studies"] for se in st["series"] for n in se["notConverted"]
    }
    assert reasons == {"localizer", "not_an_image"}


def test_committed_schema_is_current() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema(), "run: seriesflow schema"


def test_format_comes_from_the_environment_when_not_given(
    brain_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NVIDIA_CLARA_IMAGE_FORMAT", "nii")
    assert process(brain_study, tmp_path / "env")[0] == 0
    assert all(v.endswith(".nii") for v in read(tmp_path / "env" / "series-images.json").values())
    assert process(brain_study, tmp_path / "flag", "--format", "mhd")[0] == 0
    images = read(tmp_path / "flag" / "series-images.json")
    assert isinstance(images, dict)
    for image in images.values():
        assert image.endswith(".mhd")
        assert (tmp_path / "flag" / image).with_suffix(".raw").is_file()


def test_default_format_is_mhd(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "ct", slices=3, size=16)
    assert process(tmp_path / "ct", tmp_path / "out")[0] == 0
    (image,) = read(tmp_path / "out" / "series-images.json").values()
    assert image.endswith(".mhd")


def test_bad_format_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVIDIA_CLARA_IMAGE_FORMAT", "png")
    code, output = process(tmp_path, tmp_path / "out")
    assert code == 1 and "NVIDIA_CLARA_IMAGE_FORMAT" in output and "Traceback" not in output


def test_rules_precedence_flag_then_base64_then_file(
    brain_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def rules(name: str) -> str:
        return json.dumps({"selections": [{"name": name, "conditions": {"Modality": "MR"}}]})

    file_rules = tmp_path / "file.json"
    file_rules.write_text(rules("FROM_FILE"))
    flag_rules = tmp_path / "flag.json"
    flag_rules.write_text(rules("FROM_FLAG"))
    monkeypatch.setenv("NVIDIA_CLARA_SELECTION_RULES_FILE", str(file_rules))
    assert process(brain_study, tmp_path / "a")[0] == 0
    assert list(read(tmp_path / "a" / "selected-images.json")) == ["FROM_FILE"]
    monkeypatch.setenv(
        "NVIDIA_CLARA_SELECTION_RULES_BASE64", base64.b64encode(rules("FROM_B64").encode()).decode()
    )
    assert process(brain_study, tmp_path / "b")[0] == 0
    assert list(read(tmp_path / "b" / "selected-images.json")) == ["FROM_B64"]
    assert process(brain_study, tmp_path / "c", "--rules", str(flag_rules))[0] == 0
    assert list(read(tmp_path / "c" / "selected-images.json")) == ["FROM_FLAG"]


def test_bad_rules_name_the_rule_and_write_nothing(brain_study: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"selections": [{"name": "T1C", "conditions": {"Modality": "(?i"}}]}))
    code, output = process(brain_study, tmp_path / "out", "--rules", str(bad))
    assert code == 1
    assert '"T1C"' in output and "Modality" in output
    assert not (tmp_path / "out").exists()
    code, output = run("rules", "check", str(bad))
    assert code == 1 and '"T1C"' in output and "Traceback" not in output
    assert run("rules", "check", str(CLARA_RULES))[0] == 0


def test_select_and_explain_work_from_the_parser_outputs(brain_study: Path, tmp_path: Path) -> None:
    assert process(brain_study, tmp_path / "parsed")[0] == 0
    code, output = run(
        "select",
        "--input",
        str(tmp_path / "parsed"),
        "--output",
        str(tmp_path / "sel"),
        "--rules",
        str(CLARA_RULES),
    )
    assert code == 0, output
    selected = read(tmp_path / "sel" / "selected-images.json")
    assert isinstance(selected, dict) and list(selected) == ["T1C"]
    code, output = run(
        "rules",
        "explain",
        "--rules",
        str(CLARA_RULES),
        "--metadata",
        str(tmp_path / "parsed" / "dicom-metadata.json"),
    )
    assert code == 0, output
    assert "T2 FLAIR AX" in output and "does not match" in output and "localizer" in output


def test_select_without_parser_outputs_is_a_clear_error(tmp_path: Path) -> None:
    code, output = run("select", "--input", str(tmp_path), "--output", str(tmp_path / "o"))
    assert code == 1 and "dicom-metadata.json" in output and "Traceback" not in output


def shipped(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom does not ship {name}")
    return Path(str(path))


def test_bad_files_are_reported_and_the_rest_is_converted(tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "nested" / "deeper").mkdir(parents=True)
    for name in ("MR_truncated.dcm", "rtplan_truncated.dcm", "no_meta.dcm"):
        shutil.copy(shipped(name), src / name)
    shutil.copy(shipped("CT_small.dcm"), src / "nested" / "deeper" / "IMAGE0001")  # no .dcm
    (src / "notes.txt").write_text("not dicom")
    (src / "empty.dcm").write_bytes(b"")
    (src / "garbage").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 3)
    code, output = process(src, tmp_path / "out", "--format", "nii")
    assert code == 3, output  # damaged DICOM data: the truncated MR and the garbage file
    metadata = read(tmp_path / "out" / "dicom-metadata.json")
    assert isinstance(metadata, dict)
    skipped = {s["path"]: (s["code"], s["reason"]) for s in metadata["skippedFiles"]}
    assert {path: code for path, (code, _) in skipped.items()} == {
        "no_meta.dcm": "not_dicom",
        "notes.txt": "not_dicom",
        "empty.dcm": "not_dicom",
        "garbage": "damaged",
    }
    assert all(reason for _, reason in skipped.values())
    series = {se["instances"][0]["path"]: se for st in metadata["studies"] for se in st["series"]}
    assert series["nested/deeper/IMAGE0001"]["volumes"]
    assert series["MR_truncated.dcm"]["notConverted"][0]["code"] == "unreadable_pixel_data"
    assert series["rtplan_truncated.dcm"]["notConverted"][0]["code"] == "not_an_image"


def test_missing_or_empty_input_is_an_error(tmp_path: Path) -> None:
    code, output = process(tmp_path / "missing", tmp_path / "out")
    assert code == 1 and "does not exist" in output
    (tmp_path / "empty").mkdir()
    code, output = process(tmp_path / "empty", tmp_path / "out2")
    assert code == 1 and "no DICOM instances" in output


def test_output_inside_input_is_not_read_back(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "ct", slices=3, size=16)
    assert process(tmp_path / "ct", tmp_path / "ct" / "out", "--format", "nii")[0] == 0
    code, _ = process(tmp_path / "ct", tmp_path / "ct" / "out", "--format", "nii")
    assert code == 0  # the second run did not pick up the first run's outputs


@pytest.mark.parametrize("through_link", [False, True])
def test_no_file_of_the_output_folder_is_read(tmp_path: Path, through_link: bool) -> None:
    """Not even a DICOM file there, whichever path names the folders."""
    write_ct_series(tmp_path / "ct", slices=3, size=16)
    intruder = tmp_path / "intruder"
    write_brain_mr_study(intruder)
    (tmp_path / "ct" / "out").mkdir()
    shutil.copytree(intruder, tmp_path / "ct" / "out" / "mr")
    (tmp_path / "ct" / "outer").mkdir()  # a name the output folder's is a prefix of
    shutil.copy(
        next(p for p in (tmp_path / "ct").iterdir() if p.is_file()), tmp_path / "ct" / "outer"
    )
    output = tmp_path / "ct" / "out"
    if through_link:
        (tmp_path / "link").symlink_to(tmp_path / "ct")
        output = tmp_path / "link" / "out"
    code, text = process(tmp_path / "ct", output, "--format", "nii")
    assert code == 0, text
    metadata = read(tmp_path / "ct" / "out" / "dicom-metadata.json")
    paths = [
        i["path"] for s in metadata["studies"] for r in s["series"] for i in r["instances"]
    ] + [f["path"] for f in metadata["skippedFiles"]]
    assert len(paths) == 4  # the three slices and the copy in outer/ (a duplicate)
    assert sum(p.startswith("outer/") for p in paths) == 1
    assert not [p for p in paths if p.startswith("out/")]


def test_an_invalid_series_uid_never_reaches_a_file_name(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", slices=3, size=16)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = "1.2.3/../../evil"
        ds.save_as(path)
    code, output = process(tmp_path / "ct", tmp_path / "out", "--format", "nii")
    assert code == 0, output
    (name,) = read(tmp_path / "out" / "series-images.json").values()
    assert name.startswith("2.25.") and "/" not in name
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [
            "dicom-metadata.json",
            "series-images.json",
            "selected-images.json",
            name,
            name.removesuffix(".nii") + ".png",  # the preview, named after the volume
        ]
    )


def test_logs_are_json_lines_with_a_job_id_and_no_paths(tmp_path: Path) -> None:
    src = tmp_path / "DOE^JOHN"  # folder names often carry patient names
    write_ct_series(src, slices=3, size=16)
    (src / "notes.txt").write_text("x")
    code, _ = process(src, tmp_path / "out", "--logs", str(tmp_path / "logs"))
    assert code == 0  # a stray text file is reported, not an error
    lines = (tmp_path / "logs" / "seriesflow.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert {r["message"] for r in records} >= {"file skipped", "series parsed"}
    assert len({r["job_id"] for r in records}) == 1
    assert "DOE" not in "\n".join(lines) and "notes.txt" not in "\n".join(lines)


def test_stray_non_dicom_files_do_not_fail_the_run(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "in", slices=3, size=16)
    (tmp_path / "in" / "README.txt").write_text("export notes")
    code, output = process(tmp_path / "in", tmp_path / "out")
    assert code == 0, output
    skipped = read(tmp_path / "out" / "dicom-metadata.json")["skippedFiles"]
    assert [(s["path"], s["code"]) for s in skipped] == [("README.txt", "not_dicom")]


def test_unwritable_output_is_a_clear_error(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "in", slices=3, size=16)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, output = process(tmp_path / "in", blocker / "out")
    assert code == 1 and "Traceback" not in output and "out" in output


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` run by a fresh interpreter in the repository (stdout and stderr pipes)."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )


def test_process_imports_only_what_it_uses() -> None:
    """Operator mode's start: no service commands, no SimpleITK, no rich when quiet, no
    HTTP client, no imaging library, no YAML parser until YAML rules are read; and
    `import requests` and `import PIL` still work for code that does use them."""
    probe = (
        "import sys\n"
        "import seriesflow.cli as cli\n"
        "heavy = ['SimpleITK', 'rich', 'requests', 'shared.settings', 'pika', 'minio',\n"
        "         'fastapi', 'httpx', 'seriesflow.service_commands', 'yaml', 'PIL']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "import requests\n"
        "import PIL.Image\n"
        "print(callable(requests.get), callable(PIL.Image.open))\n"
    )
    done = _python(probe)
    assert done.stdout.split("\n")[:2] == ["[]", "True True"], done.stdout + done.stderr


def test_pydicom_decodes_with_the_pylibjpeg_plugins_only() -> None:
    """Pillow, which only a test tool brings into a development install, is not one of
    pydicom's decoders here either: compressed pixel data decodes as where it is absent."""
    probe = (
        "import seriesflow.cli\n"
        "import PIL.Image\n"
        "from pydicom.pixels.decoders.base import get_decoder\n"
        "from pydicom.uid import JPEG2000, JPEGBaseline8Bit, JPEGExtended12Bit\n"
        "print(sorted({n for u in (JPEGBaseline8Bit, JPEGExtended12Bit, JPEG2000)\n"
        "              for n in get_decoder(u)._available}))\n"
    )
    done = _python(probe)
    assert done.stdout.strip() == "['pylibjpeg']", done.stdout + done.stderr


def test_every_command_is_registered_once_the_app_is_asked_for() -> None:
    import typer

    import seriesflow.cli as cli

    names = set(typer.main.get_command(cli.app).commands)  # type: ignore[attr-defined]
    assert {"process", "select", "rules", "receiver", "up", "config", "quarantine"} <= names
    assert names >= cli.OPERATOR_COMMANDS


@pytest.fixture
def restored_garbage_collection() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_garbage_collection")
def test_every_command_runs_with_fewer_garbage_collections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Headers live until their series is converted: with Python's default threshold, a
    folder's headers were walked by a full collection over and over (a quarter of the time)."""
    gc.set_threshold(700, 10, 10)
    monkeypatch.setattr(sys, "argv", ["seriesflow", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, 10, 10)
    assert gc.get_freeze_count() > 10_000  # start-up's objects are never walked again


@pytest.mark.usefixtures("restored_garbage_collection")
def test_an_operator_command_collects_its_middle_generation_rarely(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One-shot: what it reads lives until it ends, so middle collections only walked it
    again; a service keeps Python's middle threshold (the test above)."""
    gc.set_threshold(700, 10, 10)
    monkeypatch.setattr(sys, "argv", ["seriesflow", "rules", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, ONE_SHOT_MIDDLE_THRESHOLD, 10)


_LAUNCH = """
import gc, sys
sys.argv = ["seriesflow", "--help"]
from seriesflow.launch import main
try:
    main()
except SystemExit:
    pass
print(gc.get_stats()[2]["collections"], gc.isenabled(), gc.get_threshold()[0])
"""


def test_the_command_loads_its_modules_without_collecting_garbage() -> None:
    """The entry point pauses the collector while the command's modules are imported (with
    it running, a full collection walked them all), and the command resumes it."""
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"] == {
        "seriesflow": "seriesflow.launch:main"
    }
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCH], capture_output=True, text=True, timeout=60, check=True
    )
    full_collections, enabled, threshold = done.stdout.splitlines()[-1].split()
    assert (full_collections, enabled) == ("0", "True")
    assert int(threshold) == YOUNG_COLLECTION_THRESHOLD


def test_processes_below_one_are_refused(
    brain_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output = process(brain_study, tmp_path / "a", "--processes", "0")
    assert code == 2 and "--processes" in output and "Traceback" not in output
    monkeypatch.setenv("SERIESFLOW_PROCESSES", "0")
    code, output = process(brain_study, tmp_path / "b")
    assert code != 0 and "SERIESFLOW_PROCESSES" in output and "Traceback" not in output


def test_two_processes_give_the_same_outputs(brain_study: Path, tmp_path: Path) -> None:
    for count in ("1", "2"):
        code, output = process(brain_study, tmp_path / count, "--processes", count)
        assert code == 0, output
    one, two = tmp_path / "1", tmp_path / "2"
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir())
    for name in names:
        if name != "dicom-metadata.json":
            assert (one / name).read_bytes() == (two / name).read_bytes(), name
    first, second = read(one / "dicom-metadata.json"), read(two / "dicom-metadata.json")
    assert len(first["studies"][0]["series"]) >= 2
    assert first == second


def test_the_summary_off_a_terminal_is_plain_lines_without_rich(tmp_path: Path) -> None:
    """In a pipeline's log (stderr not a terminal), the run's summary is plain text, and
    printing it imports no rich (a twentieth of a CT's run)."""
    write_ct_series(tmp_path / "in", slices=3, size=16)
    probe = (
        "import sys\n"
        "from seriesflow.cli import main\n"
        f"sys.argv = ['seriesflow', 'process', '-i', {str(tmp_path / 'in')!r},"
        f" '-o', {str(tmp_path / 'out')!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print('rich' in sys.modules)\n"
    )
    done = _python(probe)
    assert done.stdout.strip() == "False", done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "seriesflow process", done.stderr
    assert any(line.split() == ["instances", "3"] for line in lines), done.stderr
    assert any(line.split() == ["volumes", "written", "1"] for line in lines), done.stderr


def test_an_operator_command_ends_at_once_with_everything_written(tmp_path: Path) -> None:
    """An operator command ends without the interpreter's teardown (no atexit handler
    runs), its exit status kept, its summary and logs flushed, its outputs complete."""
    write_ct_series(tmp_path / "in", slices=3, size=16)
    probe = (
        "import atexit, sys\n"
        "atexit.register(print, 'teardown ran')\n"
        "from seriesflow.launch import main\n"
        "sys.argv = ['seriesflow'] + sys.argv[1:]\n"
        "main()\n"
    )

    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}

    def launch(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", probe, *args]
        return subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=120, env=buffered
        )

    out, logs = tmp_path / "out", tmp_path / "logs"
    done = launch("process", "-i", str(tmp_path / "in"), "-o", str(out), "--logs", str(logs))
    assert done.returncode == 0, done.stderr
    assert "teardown ran" not in done.stdout
    assert done.stderr.splitlines()[0] == "seriesflow process", done.stderr
    assert done.stderr.rstrip().splitlines()[-1].split()[0] == "output", done.stderr
    assert '"series parsed"' in (logs / "seriesflow.log").read_text()
    assert read(out / "selected-images.json")
    selected = launch("select", "-i", str(out), "-o", str(tmp_path / "selected"))
    assert selected.returncode == 0 and json.loads(selected.stdout) == read(
        tmp_path / "selected" / "selected-images.json"
    )  # stdout, a pipe, was flushed
    schema = launch("schema")  # printed with print(): held in stdout's buffer until flushed
    assert schema.returncode == 0 and json.loads(schema.stdout)["title"]
    assert schema.stdout.endswith("}\n")  # print's last newline, the one left in the buffer
    failed = launch("process", "-i", str(tmp_path / "missing"), "-o", str(tmp_path / "o2"))
    assert failed.returncode == 1 and "does not exist" in failed.stderr
    assert "teardown ran" not in failed.stdout
    other = launch("--help")  # not an operator command: Python ends it as usual
    assert other.returncode == 0 and "teardown ran" in other.stdout


def test_a_message_exit_is_status_one_with_the_message() -> None:
    code = "from seriesflow.launch import _exit_at_once\n_exit_at_once('boom')"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr.strip()) == (1, "boom")
