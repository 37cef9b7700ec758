"""The Python API examples of docs/api.md run as written, on a tiny trained run."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MARK = "<!-- api-example -->"


def api_example(mark: str = MARK) -> str:
    page = (REPO / "docs" / "api.md").read_text()
    found = re.findall(re.escape(mark) + r"\s*\n```python\n(.*?)```", page, re.S)
    assert len(found) == 1, f"docs/api.md has {len(found)} {mark} blocks, expected one"
    return found[0]


def readme_paths(tmp_path, base_run, toy_root, toy_env, monkeypatch) -> None:
    """The paths of the examples in ``tmp_path``: the toy run of README's tour and the data make demo writes."""
    (tmp_path / "runs" / "toy").mkdir(parents=True)
    (tmp_path / "runs" / "toy" / "step0").symlink_to(base_run)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "toy").symlink_to(toy_root)
    monkeypatch.chdir(tmp_path)
    for key, value in toy_env.items():
        monkeypatch.setenv(key, value)


def test_readme_api_example_runs(base_run, toy_root, toy_env, tmp_path, monkeypatch):
    readme_paths(tmp_path, base_run, toy_root, toy_env, monkeypatch)
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        exec(compile(api_example(), "docs/api.md (Python API)", "exec"), namespace)
    printed = out.getvalue().splitlines()
    assert printed[0].startswith("Model(voc/10-10-ov step 0")
    assert printed[1].startswith("{0: 'background', 1: 'aeroplane'")
    assert len(namespace["masks"]) == 4 and all(m.shape == (32, 32) for m in namespace["masks"])
    assert namespace["rgb"].shape == (32, 32, 3)
    assert re.fullmatch(r"mIoU \d+\.\d", printed[-1])


def test_api_names_from_the_package_root():
    import incseg_cli
    from incseg_cli import api

    assert incseg_cli.load_model is api.load_model and incseg_cli.evaluate is api.evaluate
    with pytest.raises(AttributeError):
        incseg_cli.no_such_name  # noqa: B018


def test_readme_training_example_runs_the_stage_as_the_command(base_run, toy_root, toy_env, tmp_path, monkeypatch):
    import json

    readme_paths(tmp_path, base_run, toy_root, toy_env, monkeypatch)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        exec(compile(api_example("<!-- api-train-example -->"), "docs/api.md (training API)", "exec"), {})
    assert re.fullmatch(r"old \d+\.\d, new \d+\.\d", out.getvalue().splitlines()[-1])
    manifest = json.loads((tmp_path / "runs" / "toy" / "step1-mib-api" / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert (manifest["options"]["method"], manifest["options"]["lambda_kd"], manifest["options"]["epochs"]) == ("mib", 5.0, 1)


def test_api_method_options_refuse_another_methods_option():
    from incseg_cli import method_options
    from incseg_cli.errors import UsageError

    assert method_options("plop", pseudo_median="corrected").pseudo_median == "corrected"
    with pytest.raises(UsageError, match="alpha: not options of --method mib"):
        method_options("mib", alpha=0.5)


def test_api_evaluate_refuses_unknown_and_out_of_range_options(tmp_path):
    """Refused before any file is read, as the command refuses them."""
    from incseg_cli import evaluate
    from incseg_cli.errors import UsageError

    with pytest.raises(UsageError, match="eval_sise: not options of evaluate"):
        evaluate(tmp_path / "run", tmp_path, eval_sise=64)
    with pytest.raises(UsageError, match="--eval-size must be >= 16"):
        evaluate(tmp_path / "run", tmp_path, eval_size=8)
