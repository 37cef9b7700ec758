"""--config and --set obey the command line's rules (issue 19, item 5): another method's
options are refused wherever they come from, a manifest of another command is refused, and
a config file that is missing, a directory or unreadable ends in one error line (exit 2 or
5), never an internal error."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers import error_line
from incseg_cli.errors import CorruptFileError, UsageError

# A train-step manifest as a run with --method alife --lambda-ali 2 writes it: resolved
# options (lambda_kd and head_init came from the method) and the names its user gave.
ALIFE_OPTIONS = {"prev": "runs/step0/checkpoint.pt", "data": "toy", "preset": "toy", "method": "alife",
                 "task": "10-10-ov", "step": 1, "epochs": 1, "lambda_ali": 2.0, "lambda_kd": 1.0,
                 "head_init": "mib", "out": "runs/s1"}


@pytest.fixture
def cli(monkeypatch, capsys):
    """The CLI in this process (``main(argv)``: the ``incseg`` command's parsing, error line
    and exit code), training replaced by a recorder of what it was given."""
    from incseg_cli.cli import main
    import incseg_cli.stages.train_base as base
    import incseg_cli.stages.train_step as step

    seen: list = []
    monkeypatch.setattr(step, "train_step", lambda run, options=None: seen.append((run, options)) or {})
    monkeypatch.setattr(base, "train_base", lambda run: seen.append((run, None)) or {})
    monkeypatch.setattr("incseg_cli.cli.step_cmds.show_metrics", lambda *a, **k: None)
    monkeypatch.setattr("incseg_cli.cli.train_cmds.show_metrics", lambda *a, **k: None)
    monkeypatch.setenv("INCSEG_NO_PROGRESS", "1")
    monkeypatch.delenv("INCSEG_DEBUG", raising=False)

    def run(*args):
        capsys.readouterr()
        seen.clear()
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        result = subprocess.CompletedProcess(args, exc.value.code, out, err)
        result.seen = list(seen)
        return result

    return run


def _manifest(path: Path, command: str, options: dict, given: list[str] | None, argv: bool = True) -> Path:
    record = {"fingerprint": "f" * 64, "status": "complete", "options": options}
    if argv:
        record["argv"] = ["/usr/bin/incseg", command, "--out", str(options.get("out"))]
    if given is not None:
        record["given_options"] = given
    path.write_text(json.dumps(record))
    return path


def _refused(result, code: int, *fragments: str) -> str:
    assert result.returncode == code, result.stderr
    line = error_line(result.stderr, only=True)
    for fragment in fragments:
        assert fragment in line, line
    assert not result.seen  # nothing ran
    return line


# -- another method's options -------------------------------------------------------------------
@pytest.mark.parametrize("switch", [["--method", "ft"], ["--set", "method=ft"]], ids=["method", "set"])
def test_a_manifest_option_of_another_method_is_refused_as_on_the_command_line(cli, tmp_path, switch):
    manifest = _manifest(tmp_path / "manifest.json", "train-step", ALIFE_OPTIONS,
                         ["prev", "data", "preset", "method", "epochs", "lambda_ali", "out"])
    on_command_line = cli("train-step", "--prev", tmp_path / "p", "--data", tmp_path, "--method", "ft",
                          "--lambda-ali", "2")
    expected = _refused(on_command_line, 2)
    line = _refused(cli("train-step", "--config", manifest, *switch), 2)
    assert line.startswith(expected), (line, expected)  # the same refusal, then where it came from
    assert f"--config {manifest}" in line


def test_a_method_default_recorded_in_the_manifest_is_not_refused(cli, tmp_path):
    """lambda_kd and head_init were alife's own values, not its user's: with another method
    they resolve again (a note says so), nothing is refused."""
    manifest = _manifest(tmp_path / "manifest.json", "train-step", ALIFE_OPTIONS,
                         ["prev", "data", "preset", "method", "epochs", "out"])
    r = cli("train-step", "--config", manifest, "--method", "ft")
    assert r.returncode == 0, r.stderr
    (run, options), = r.seen
    assert run.method == "ft" and run.epochs == 1 and "resolved again" in r.stderr


def test_set_none_drops_the_option_a_refusal_names(cli, tmp_path):
    manifest = _manifest(tmp_path / "manifest.json", "train-step", ALIFE_OPTIONS,
                         ["prev", "data", "method", "lambda_ali", "out"])
    r = cli("train-step", "--config", manifest, "--set", "method=ft", "--set", "lambda_ali=none")
    assert r.returncode == 0, r.stderr
    assert r.seen[0][0].method == "ft"


def test_a_plain_recipe_with_another_methods_option_is_refused(cli, tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"prev": "p", "data": "d", "method": "mib", "lambda_ali": 2}))
    _refused(cli("train-step", "--config", recipe), 2, "--lambda-ali is not used by --method mib")


# -- a manifest of another command ----------------------------------------------------------------
def test_a_manifest_of_another_command_is_refused(cli, tmp_path):
    base = _manifest(tmp_path / "base.json", "train-base",
                     {"data": "toy", "task": "10-10-ov", "preset": "toy", "backbone": "tiny", "epochs": 2,
                      "out": "runs/step0"}, ["data", "task", "preset", "backbone", "epochs", "out"])
    _refused(cli("train-step", "--config", base, "--prev", tmp_path / "p"), 2,
             "manifest of a train-base run, not of train-step")
    step = _manifest(tmp_path / "step.json", "train-step", ALIFE_OPTIONS, list(ALIFE_OPTIONS))
    _refused(cli("train-base", "--config", step), 2, "manifest of a train-step run, not of train-base")


def test_a_manifest_without_argv_is_told_by_its_options(cli, tmp_path):
    """A run started from the Python API records the caller's argv: its options say whose it is."""
    base = _manifest(tmp_path / "base.json", "train-base",
                     {"data": "toy", "task": "10-10-ov", "backbone": "tiny", "output_stride": 16, "out": "o"},
                     None, argv=False)
    _refused(cli("train-step", "--config", base, "--prev", tmp_path / "p"), 2, "manifest of a train-base run")
    r = cli("train-base", "--config", base)
    assert r.returncode == 0, r.stderr
    assert r.seen[0][0].backbone == "tiny"


@pytest.mark.slow
def test_a_real_train_base_manifest_given_to_train_step(base_run, toy_env, run_cli, tmp_path):
    r = run_cli("train-step", "--config", base_run / "manifest.json", "--prev", base_run, "--method", "ft",
                "--out", tmp_path / "s1", env=toy_env)
    assert r.returncode == 2, r.stderr
    assert "manifest of a train-base run" in error_line(r.stderr, only=True)
    assert not (tmp_path / "s1").exists()


# -- the file itself ------------------------------------------------------------------------------
def test_missing_or_directory_config_is_a_usage_error(cli, tmp_path):
    _refused(cli("train-base", "--config", tmp_path / "nope.json"), 2, "nope.json: no such file")
    _refused(cli("train-base", "--config", tmp_path), 2, "is a directory, not a JSON file")
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    _refused(cli("train-step", "--config", run), 2, f"--config {run / 'manifest.json'}")


@pytest.mark.parametrize("content", [b'{"lr": ', b"[1, 2]", b"\xff\xfe\x00garbage", b""],
                         ids=["cut", "list", "binary", "empty"])
def test_unreadable_config_is_a_corrupt_file(cli, tmp_path, content):
    recipe = tmp_path / "recipe.json"
    recipe.write_bytes(content)
    _refused(cli("train-base", "--config", recipe), 5, str(recipe))


def test_a_config_that_cannot_be_read_is_exit_5(cli, tmp_path, monkeypatch):
    recipe = tmp_path / "recipe.json"
    recipe.write_text("{}")
    real = Path.read_text

    def denied(self, *args, **kwargs):
        if self == recipe:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)  # root reads any file: a mode would not do
    _refused(cli("train-base", "--config", recipe), 5, "cannot be read (Permission denied)")


def test_read_recipe_errors_are_typed(tmp_path):
    from incseg_cli.config import read_recipe

    with pytest.raises(UsageError):
        read_recipe(tmp_path / "missing.json")
    with pytest.raises(UsageError):
        read_recipe(tmp_path)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CorruptFileError):
        read_recipe(tmp_path / "bad.json")
