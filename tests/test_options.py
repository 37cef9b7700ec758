"""Options are declared once (``config.option``): the CLI, --help, refusals and recipes derive
from the declarations. These tests are generated from the declarations, not from a hand-kept
list, so a method added to the registry is checked without editing them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import typer

from incseg_cli import __version__, config
from incseg_cli.cli import app, main
from incseg_cli.methods.registry import STEP_METHODS

def _command(name: str):
    return typer.main.get_command(app).commands[name]


def _params(name: str) -> dict[str, object]:
    return {opt: p for p in _command(name).params for opt in [*p.opts, *getattr(p, "secondary_opts", [])]}


def _invoke(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


METHOD_FIELDS = [(name, f) for name, cls in STEP_METHODS.items() for f in config.declared(cls.Options)]


@pytest.mark.parametrize("method,field", METHOD_FIELDS, ids=[f"{m}-{f.name}" for m, f in METHOD_FIELDS])
def test_every_method_option_is_in_train_step_help_with_choices_and_default(method, field, capsys, monkeypatch):
    flag = config.flag_name(field.name)
    params = _params("train-step")
    assert flag in params, f"{flag} of --method {method} is not a train-step option"
    param = params[flag]
    choices = config.choices_of(field) or config.literal_values(config.field_types(STEP_METHODS[method].Options)[field.name])
    if choices:
        assert tuple(param.type_descriptor.choices) == tuple(choices)
    help_text = param.help or ""
    assert config.help_of(field) in help_text
    default = field.default
    if default is not None and default is not dataclasses.MISSING:
        shown = [f"--{field.name.replace('_', '-')}" if default is True else f"--no-{field.name.replace('_', '-')}"] \
            if isinstance(default, bool) else [str(default)]
        assert any(s in help_text for s in shown) or (param.show_default and param.default == default), \
            f"{flag}: default {default!r} not shown"
    # and the rendered help lists it (wide terminal: nothing cut)
    monkeypatch.setenv("COLUMNS", "400")
    code, out, _ = _invoke(["train-step", "--help"], capsys)
    assert code == 0 and flag in out
    for choice in choices:
        assert str(choice) in out


def _value_for(cls: type, field) -> list[str]:
    t = config.base_type(config.field_types(cls)[field.name])
    flag = config.flag_name(field.name)
    if t is bool:
        return [f"--no-{field.name.replace('_', '-')}" if field.default is True else flag]
    choices = config.choices_of(field) or config.literal_values(t)
    if choices:
        return [flag, str(choices[0])]
    return [flag, {int: "1", float: "0.5"}.get(t, "x.tsv")]


OTHERS = [(m, other, f) for m, cls in STEP_METHODS.items() for other, ocls in STEP_METHODS.items()
          for f in config.declared(ocls.Options)
          if f.name not in {g.name for g in config.declared(cls.Options)}]


@pytest.mark.parametrize("method,other,field", OTHERS, ids=[f"{m}-{o}-{f.name}" for m, o, f in OTHERS])
def test_an_option_of_another_method_is_refused(method, other, field, tmp_path, capsys):
    argv = _value_for(STEP_METHODS[other].Options, field)
    code, _, err = _invoke(["train-step", "--prev", str(tmp_path / "none"), "--data", str(tmp_path),
                            "--method", method, *argv], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == f"error: {argv[0]} is not used by --method {method}"


def test_every_command_has_examples_and_no_spec_citations():
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert "**Examples**" in (command.help or ""), f"{name} --help has no Examples section"
        texts = [command.help or ""] + [getattr(p, "help", "") or "" for p in command.params]
        assert not any(".md §" in t for t in texts), f"{name} --help cites a spec file"


def test_version(capsys):
    code, out, _ = _invoke(["--version"], capsys)
    assert code == 0 and out.strip() == f"incseg {__version__}"


def test_recipe_file_errors_are_one_line(tmp_path, capsys):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"task": "10-10-ov", "lr": 0.01, "learning_rate": 1}))
    code, _, err = _invoke(["train-base", "--config", str(recipe), "--data", str(tmp_path)], capsys)
    assert code == 2 and err.strip() == f"error: --config {recipe}: no option --learning-rate in train-base"
    code, _, err = _invoke(["train-base", "--data", str(tmp_path), "--task", "15-5", "--set", "lr=fast"], capsys)
    assert code == 2 and err.strip() == "error: --set: --lr expects float, got 'fast'"
    code, _, err = _invoke(["train-base", "--data", str(tmp_path), "--task", "15-5", "--set", "speed=2"], capsys)
    assert code == 2 and "no option --speed" in err


def test_precedence_is_command_line_then_set_then_config(tmp_path, capsys, monkeypatch):
    """One rule for every command: what ``train-base`` would build from each source."""
    seen = {}
    import incseg_cli.stages.train_base as base

    monkeypatch.setattr(base, "train_base", lambda run: seen.setdefault("run", run) and {})
    monkeypatch.setattr("incseg_cli.cli.train_cmds.show_metrics", lambda *a, **k: None)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"task": "15-5", "lr": 0.5, "epochs": 3, "seed": 4, "data": str(tmp_path)}))
    with pytest.raises(SystemExit) as exc:
        main(["train-base", "--config", str(recipe), "--set", "epochs=7", "--set", "seed=5", "--seed", "6"])
    assert exc.value.code == 0
    run = seen["run"]
    assert (run.task, run.lr, run.epochs, run.seed, run.data) == ("15-5", 0.5, 7, 6, tmp_path)
    assert run.batch_size is None  # left to the preset


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]


def test_rerun_from_manifest_gives_identical_weights(base_run, toy_env, run_cli, tmp_path):
    out = tmp_path / "again"
    r = run_cli("train-base", "--config", str(base_run / "manifest.json"), "--out", str(out), env=toy_env)
    assert r.returncode == 0, r.stderr
    first, again = _weights(base_run), _weights(out)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    recorded = json.loads((base_run / "manifest.json").read_text())["options"]
    rerun = json.loads((out / "manifest.json").read_text())["options"]
    assert {k: v for k, v in rerun.items() if k != "out"} == {k: v for k, v in recorded.items() if k != "out"}


def test_a_changed_manifest_recipe_resolves_its_defaults_again(tmp_path, capsys, monkeypatch):
    """A manifest records resolved values; once --set changes the recipe, the values its run
    did not set (method and preset defaults, WILSON's --lr-head from --lr) resolve again."""
    seen = []
    import incseg_cli.stages.train_base as base

    monkeypatch.setattr(base, "train_base", lambda run: seen.append(run) or {})
    monkeypatch.setattr("incseg_cli.cli.train_cmds.show_metrics", lambda *a, **k: None)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"fingerprint": "x", "given_options": ["task", "data", "preset", "lr"],
                                    "options": {"task": "15-5", "data": str(tmp_path), "preset": "toy", "lr": 0.5,
                                                "batch_size": 16, "epochs": 12}}))
    for extra in ([], ["--workers", "3", "--out", str(tmp_path / "o")], ["--set", "preset=voc"]):
        with pytest.raises(SystemExit) as exc:
            main(["train-base", "--config", str(manifest), *extra])
        assert exc.value.code == 0
    same, volatile_only, changed = seen
    assert (same.batch_size, same.epochs, volatile_only.batch_size) == (16, 12, 16)  # the exact recipe
    assert (changed.preset, changed.lr, changed.batch_size, changed.epochs) == ("voc", 0.5, None, None)
    assert "resolved again" in capsys.readouterr().err


LIMITED = [(m, f) for m, f in METHOD_FIELDS if f.metadata.get("limit") is not None and f.metadata["limit"].low is not None]


@pytest.mark.parametrize("method,field", LIMITED, ids=[f"{m}-{f.name}" for m, f in LIMITED])
def test_every_method_option_refuses_a_value_below_its_range(method, field, capsys, monkeypatch, tmp_path):
    """The range is on the option's field: a value below it is one line and exit 2, before any
    file is read."""
    monkeypatch.setenv("INCSEG_NO_PROGRESS", "1")
    limit = field.metadata["limit"]
    bad = limit.low if limit.open_low else limit.low - 1
    code, _, err = _invoke(["train-step", "--prev", str(tmp_path / "none"), "--data", str(tmp_path), "--method", method,
                            config.flag_name(field.name), str(bad)], capsys)
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith(f"error: {config.flag_name(field.name)} must be"), err


def test_every_command_with_options_is_declared_once():
    """Every command that takes options derives them from a typed declaration (the one the
    Python API takes); only the option-less ones are plain Typer functions."""
    from incseg_cli.cli.app import COMMAND_MODULES
    from incseg_cli.cli.declared import _all_command_options

    assert set(COMMAND_MODULES) - set(_all_command_options()) == {"exit-codes", "version"}


def test_the_data_functions_of_the_api_take_the_commands_options(toy_root, tmp_path):
    from incseg_cli import api
    from incseg_cli.errors import UsageError

    report = api.check_data(api.CheckDataOptions(data=toy_root))
    assert report["usable"] and report["dataset"] == "voc"
    assert not api.check_data(api.CheckDataOptions(data=tmp_path / "none"))["usable"]
    assert [t.key for t in api.list_tasks(api.ListTasksOptions(dataset="voc"))][:2] == ["offline", "19-1"]
    with pytest.raises(UsageError, match="--workers must be >= 1"):  # the field's range, as on the command line
        api.make_toy_data(api.ToyDataOptions(out=tmp_path / "toy", workers=0))
    assert not (tmp_path / "toy").exists()


def test_method_defaults_are_typed_and_their_help_comes_from_them():
    from incseg_cli.methods.plop import PLOP
    from incseg_cli.methods.step import StepDefaults
    from incseg_cli.methods.wilson import COCO_DEFAULTS, WilsonOptions
    from incseg_cli.tasks import get_task

    with pytest.raises(TypeError):  # a misspelt option fails where the recipe is written
        StepDefaults(options=WilsonOptions(alhpa=0.5))
    assert COCO_DEFAULTS.as_dict() == {"alpha": 0.9, "pseudo_epochs": 5, "lr_localizer": 0.01, "lambda_enc": 1.0,
                                       "epochs": 30}
    assert PLOP.defaults(get_task("voc", "10-1"), 1, "voc").as_dict()["epochs"] == 10
    assert "epochs" not in PLOP.defaults(get_task("voc", "15-5"), 1, "voc").as_dict()
    alpha = next(f for f in config.declared(WilsonOptions) if f.name == "alpha")
    assert config.help_of(alpha).endswith("[voc/toy: 0.5, coco: 0.9]")
