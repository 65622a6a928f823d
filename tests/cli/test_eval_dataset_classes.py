"""`eval` refuses, with one line and before evaluating, a model whose class count differs from the
classes the dataset's dataset.json lists."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from aspp_deploy.cli import app
from aspp_deploy.errors import DatasetError, InputError
from aspp_deploy.eval import evaluate as evaluate_mod
from aspp_deploy.eval.evaluate import check_dataset_classes
from aspp_deploy.model.deeplab import ModelConfig
from tests.conftest import make_checkpoint

runner = CliRunner()


@pytest.fixture
def data_copy(tiny_data, tmp_path):
    return shutil.copytree(tiny_data, tmp_path / "data")


@pytest.fixture(scope="module")
def three_class_checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("c3") / "c3.pt", ModelConfig(num_classes=3, aspp_depth=16))


def test_mismatch_is_refused_before_evaluating(tiny_data, three_class_checkpoint, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(evaluate_mod, "evaluate", lambda *a, **k: calls.append(a))
    report = tmp_path / "r.json"
    r = runner.invoke(app, ["eval", "--checkpoint", str(three_class_checkpoint), "--data", str(tiny_data),
                            "--json", str(report)])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len([line for line in lines if "error" in line.lower()]) == 1, r.output
    assert "predicts 3 classes" in r.output and "lists 6" in r.output and "dataset.json" in r.output
    assert not calls and not report.exists()


def test_matching_class_count_evaluates(tiny_data, tiny_checkpoint, tmp_path):
    report = tmp_path / "r.json"
    r = runner.invoke(app, ["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(tiny_data),
                            "--limit", "1", "--json", str(report)])
    assert r.exit_code == 0, r.output
    assert json.loads(report.read_text())["num_images"] == 1


def test_without_dataset_json_the_mask_check_still_applies(data_copy, three_class_checkpoint):
    (data_copy / "dataset.json").unlink()
    r = runner.invoke(app, ["eval", "--checkpoint", str(three_class_checkpoint), "--data", str(data_copy)])
    assert r.exit_code == 1 and "outside 0..2" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("content, fragment", [
    ("[1, 2]", "not a JSON object"), ("{not json", "not valid JSON"),
    ('{"classes": "background,disc"}', "must be a list of class names"),
    ('{"classes": [1, 2, 3]}', "must be a list of class names"),
    ('{"classes": ["a", "b"]}', "predicts 3 classes but"),
])
def test_check_dataset_classes_function(tmp_path, content, fragment):
    (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(DatasetError if "JSON" not in fragment else InputError, match=fragment):
        check_dataset_classes(tmp_path, ["background", "a", "b"])


def test_check_dataset_classes_accepts(tmp_path):
    check_dataset_classes(tmp_path, ["bg", "x"])  # no dataset.json
    (tmp_path / "dataset.json").write_text('{"seed": 0}')  # no classes listed
    check_dataset_classes(tmp_path, ["bg", "x"])
    (tmp_path / "dataset.json").write_text('{"classes": ["background", "thing"]}')
    check_dataset_classes(tmp_path, ["bg", "x"])  # names may differ; the count is what breaks the metric
