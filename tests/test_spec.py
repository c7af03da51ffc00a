import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from vap.errors import RegistryError, SpecError
from vap.spec import (
    MAX_SPEC_BYTES,
    MAX_SPEC_VALUES,
    _short,
    apply_overrides,
    dump_spec,
    load_spec,
    parse_spec,
    parse_tracking_uri,
)

EXAMPLE = REPO / "examples" / "demo.yaml"


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_example_spec_is_valid_and_paths_become_absolute():
    spec = load_spec(EXAMPLE)
    assert spec.trainer.workers == 2 and spec.trainer.zero_stage == 3
    assert Path(spec.storage.uri).is_absolute()
    assert spec.registry.tracking_uri.startswith("sqlite:////")


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda d: d["trainer"].update(wrokers=2), "unknown key 'trainer.wrokers'"),
        (lambda d: d["trainer"].update(workers=0), "'trainer.workers'"),
        (lambda d: d["trainer"].update(lr="fast"), "'trainer.lr'"),
        (lambda d: d.pop("storage"), "missing key 'storage'"),
        (lambda d: d["storage"].update(uri="gs://bucket/x"), "unsupported scheme 'gs://'"),
        (lambda d: d["storage"].update(uri="s3:///nobucket"), "names a bucket"),
        (lambda d: d["model"].update(family="sora"), "'model.family'"),
        (lambda d: d["registry"].update(tracking_uri="mlflow.local"), "not an MLflow URI"),
        (lambda d: d["trainer"].update(checkpoint_every=500), "exceeds trainer.steps"),
        (lambda d: d.update(name="My Job"), "'name'"),
    ],
)
def test_bad_spec_is_refused_naming_the_key(edit, named):
    data = example()
    edit(data)
    with pytest.raises(SpecError) as err:
        parse_spec(data, "job.yaml")
    assert named in str(err.value)
    assert str(err.value).startswith("job.yaml: invalid job spec")


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
    bad.write_text("- a list")
    with pytest.raises(SpecError, match="YAML mapping"):
        load_spec(bad)


def test_cli_spec_check_exit_codes_and_no_traceback(tmp_path):
    vap = str(REPO / ".venv/bin/vap")
    ok = subprocess.run([vap, "spec", "check", str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(ok.stdout)["name"] == "vap-demo"
    data = example()
    data["trainer"]["workers"] = -1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    out = subprocess.run([vap, "spec", "check", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "trainer.workers" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# --- exact behaviour of the spec's helpers (each expectation written out by hand) ---------------

@pytest.mark.parametrize("uri", ["http://mlflow:5000", "https://mlflow.example.com", "sqlite:////abs/mlflow.db",
                                 "databricks", "databricks://profile"])
def test_tracking_uris_that_are_kept_as_written(uri):
    assert parse_tracking_uri(uri) == uri


def test_a_relative_sqlite_path_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_tracking_uri("sqlite:///runs/mlflow.db") == f"sqlite:///{tmp_path}/runs/mlflow.db"


@pytest.mark.parametrize(("uri", "message"), [
    ("http://", "'http://': names no host; use http://host:port"),
    ("https://:5000", "'https://:5000': names no host; use http://host:port"),
    ("sqlite:///", "'sqlite:///': names no database file; use sqlite:///path/to/mlflow.db"),
    ("sqlite:///runs/", "'sqlite:///runs/': names no database file; use sqlite:///path/to/mlflow.db"),
    ("databricksx", "'databricksx' is not an MLflow URI; use http://host:port or sqlite:///path.db"),
    ("HTTP://mlflow:5000", "'HTTP://mlflow:5000' is not an MLflow URI; use http://host:port or sqlite:///path.db"),
])
def test_bad_tracking_uris_give_exactly_this_line(uri, message):
    with pytest.raises(RegistryError) as err:
        parse_tracking_uri(uri)
    assert str(err.value) == message


@pytest.mark.parametrize(("problems", "rest"), [(6, "1 more problem"), (7, "2 more problems")])
def test_more_than_five_problems_lists_five_and_counts_the_rest(problems, rest):
    data = example()
    data["trainer"].update({f"bad{i}": 1 for i in range(problems)})
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    listed = "; ".join(f"unknown key 'trainer.bad{i}': remove it or check its spelling" for i in range(5))
    assert str(err.value) == f"spec: invalid job spec: {listed}; and {rest}"


def test_five_problems_are_all_listed_with_no_count():
    data = example()
    data["trainer"].update({f"bad{i}": 1 for i in range(5)})
    with pytest.raises(SpecError) as err:
        parse_spec(data, "job.yaml")
    listed = "; ".join(f"unknown key 'trainer.bad{i}': remove it or check its spelling" for i in range(5))
    assert str(err.value) == f"job.yaml: invalid job spec: {listed}"


def test_a_rule_across_keys_is_reported_at_the_top_level_without_pydantics_prefix():
    data = example()
    data["trainer"].update(steps=4, checkpoint_every=5)
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert str(err.value) == ("spec: invalid job spec: '(top level)': trainer.checkpoint_every (5) exceeds "
                              f"trainer.steps (4): no checkpoint would be written; lower it (got {_short(data)})")


def test_a_document_that_is_not_a_mapping_names_its_type():
    with pytest.raises(SpecError) as err:
        parse_spec(["a"])
    assert str(err.value) == "spec: a job spec is a YAML mapping, got list"


def test_errors_name_the_file_they_come_from(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError) as err:
        load_spec(bad)
    assert len(str(err.value)) == len(f"{bad}: not valid YAML: ") + 200  # a parser error longer than the cut
    try:
        yaml.safe_load(bad.read_text())
    except yaml.YAMLError as e:
        expected = str(e)  # the YAML parser's own words, cut to 200 characters, on one line
    expected = expected if len(expected) <= 200 else expected[:199] + "…"
    assert str(err.value) == f"{bad}: not valid YAML: {expected}".replace("\n", " ")
    bad.write_text("- a\n")
    with pytest.raises(SpecError) as err:
        load_spec(bad)
    assert str(err.value) == f"{bad}: a job spec is a YAML mapping, got list"


def test_nesting_too_deep_is_one_line(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("name: " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(SpecError) as err:
        load_spec(bad)
    assert str(err.value) == f"{bad}: nested too deeply for a job spec; check the file"


def test_a_byte_order_mark_is_not_part_of_the_spec(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_bytes(b"\xef\xbb\xbf" + EXAMPLE.read_bytes())
    assert load_spec(job) == load_spec(EXAMPLE)


def test_exactly_the_size_limit_is_read_one_byte_more_is_refused(tmp_path):
    job = tmp_path / "job.yaml"
    text = EXAMPLE.read_bytes()
    job.write_bytes(text + b"#" * (MAX_SPEC_BYTES - len(text)))
    assert load_spec(job) == load_spec(EXAMPLE)
    job.write_bytes(text + b"#" * (MAX_SPEC_BYTES + 1 - len(text)))
    with pytest.raises(SpecError) as err:
        load_spec(job)
    assert str(err.value) == f"{job}: larger than 1024 KiB, too large for a job spec; check the file"


def test_an_endless_stream_is_refused_after_the_limit():
    # reads at most MAX_SPEC_BYTES + 1 bytes: reading to the end would never return
    with pytest.raises(SpecError, match="too large for a job spec"):
        load_spec("/dev/zero")


def _values(n: int) -> str:
    """A YAML document that expands to exactly `n` values: a mapping (1), its key (1), a list (1)
    of n - 3 scalars."""
    return "k: [" + ", ".join(["0"] * (n - 3)) + "]\n"


def test_the_expansion_limit_is_exact_for_mappings_and_sequences(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(_values(MAX_SPEC_VALUES))
    with pytest.raises(SpecError) as err:
        load_spec(job)
    assert "missing key 'name'" in str(err.value)  # read: only the schema refuses it
    job.write_text(_values(MAX_SPEC_VALUES + 1))
    with pytest.raises(SpecError) as err:
        load_spec(job)
    assert str(err.value) == (f"{job}: YAML anchors/aliases expand to more than {MAX_SPEC_VALUES} values; a job spec "
                              "needs a few dozen: write the values out instead of aliasing them")


def test_a_key_counts_as_what_it_expands_to(tmp_path):
    job = tmp_path / "job.yaml"  # a complex key (a list) of the limit's size
    job.write_text("? [" + ", ".join(["0"] * MAX_SPEC_VALUES) + "]\n: v\n")
    with pytest.raises(SpecError, match="expand to more than"):
        load_spec(job)


def test_an_alias_counts_once_per_use(tmp_path):
    job = tmp_path / "job.yaml"  # a block of 5000 values used twice: 1 + 1 + 5000 + 1 + 5000 > limit
    block = "[" + ", ".join(["0"] * 4999) + "]"
    job.write_text(f"a: &x {block}\nb: *x\n")
    with pytest.raises(SpecError, match="expand to more than"):
        load_spec(job)


def test_overrides_set_nested_values_and_leave_the_input_alone():
    data = {"trainer": {"steps": 1}, "name": "x"}
    out = apply_overrides(data, ["trainer.steps=5", "trainer.lr=1e-3", "new.section.key=[1, 2]", "name=a=b",
                                 "registry.model_name="])
    assert out == {"trainer": {"steps": 5, "lr": "1e-3"}, "name": "a=b", "new": {"section": {"key": [1, 2]}},
                   "registry": {"model_name": ""}}
    assert data == {"trainer": {"steps": 1}, "name": "x"}  # a deep copy was changed, not the caller's


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.steps", "override 'trainer.steps': write it as dotted.key=value (e.g. trainer.steps=5)"),
    ("trainer..steps=1", "override 'trainer..steps=1': write it as dotted.key=value (e.g. trainer.steps=5)"),
    ("name.first.x=1", "override 'name.first.x=1': 'name' is not a section"),
    ("name.first=1", "override 'name.first=1': 'name' is not a section"),
    ("trainer.steps.n=1", "override 'trainer.steps.n=1': 'trainer.steps' is not a section"),
    ("trainer.steps.n.m=1", "override 'trainer.steps.n.m=1': 'trainer.steps' is not a section"),
    ("trainer.steps=[", "override 'trainer.steps=[': the value is not valid YAML; quote it"),
])
def test_a_malformed_override_is_exactly_this_line(override, message):
    with pytest.raises(SpecError) as err:
        apply_overrides({"name": "x", "trainer": {"steps": 1}}, [override])
    assert str(err.value) == message


def test_short_bounds_what_an_error_message_quotes():
    assert _short("x" * 78) == "'" + "x" * 78 + "'"  # a repr of 80 characters: whole
    assert _short("x" * 79) == "'" + "x" * 37 + "..." + "x" * 38 + "'"  # 81: reprlib keeps both ends
    assert _short(["x" * 76]) == "['" + "x" * 76 + "']"  # 80: whole
    assert _short(["x" * 77]) == "['" + "x" * 77 + "…"  # 81: cut to 80, the last one '…'
    assert _short(["x" * 70, "y" * 70]) == "['" + "x" * 70 + "', '" + "yyy…"
    assert _short("x" * 10, 10, repr_=False) == "x" * 10 and _short("x" * 11, 10, repr_=False) == "x" * 9 + "…"
    assert _short("ab", repr_=False) == "ab"
    assert _short([[[1]]]) == "[[[...]]]"  # two levels deep
    assert _short({"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}) == "{'a': 0, 'b': 1, 'c': 2, 'd': 3, ...}"
    assert _short([0, 1, 2, 3, 4]) == "[0, 1, 2, 3, ...]"
    assert _short((0, 1, 2, 3, 4)) == "(0, 1, 2, 3, ...)"
    assert _short({0, 1, 2, 3, 4}) == "{0, 1, 2, 3, ...}"


def test_dump_spec_round_trips_in_schema_order():
    spec = load_spec(EXAMPLE)
    text = dump_spec(spec)
    assert text.startswith("name: ") and list(yaml.safe_load(text)) == list(type(spec).model_fields)
    assert parse_spec(yaml.safe_load(text)) == spec
