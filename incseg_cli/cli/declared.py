"""Typer commands derived from declared options (``incseg_cli/config.py``).

``declared_command`` turns the option dataclasses of a stage (and, for ``train-step``, of
every method) into the command's options, ``--help`` included, adds ``--config FILE`` and
``--set KEY=VALUE``, and hands the decorated function a ``Parsed`` from which it builds the
typed option objects. Precedence, once: the command line, then ``--set``, then ``--config``,
then the declared default (``None`` for options a preset or method fills later).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import Field
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Literal, Mapping, Optional, Sequence

import typer

from incseg_cli import config
from incseg_cli.console import log
from incseg_cli.errors import UsageError

CONFIG_PANEL = "Recipe"
ConfigFile = Annotated[Optional[Path], typer.Option(
    "--config", metavar="FILE", rich_help_panel=CONFIG_PANEL, show_default=False,
    help="Re-run a recorded recipe: a run's manifest.json (its options) or a JSON object of options. "
         "Options given on the command line or with --set win.")]
SetItems = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY=VALUE", rich_help_panel=CONFIG_PANEL, show_default=False,
    help="Override one option of --config (repeatable), e.g. --set lr=0.01 --set out=runs/again.")]


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def preset_defaults_text(name: str, tables: Mapping[str, Mapping[str, Any]]) -> str:
    """``voc/coco: 30, ade: 60, toy: 12``: a preset-filled option's defaults, grouped."""
    groups: dict[str, list[str]] = {}
    for preset, table in tables.items():
        if name in table:
            groups.setdefault(_describe(table[name]), []).append(preset)
    return ", ".join(f"{'/'.join(presets)}: {value}" for value, presets in groups.items())


@dataclasses.dataclass
class Declared:
    """One command-line option and the declarations it stands for (several methods may
    declare an option of the same name)."""

    name: str
    annotation: Any
    fields: list[tuple[str, Field]]  # (owner label, field)
    panel: str | None = None

    @property
    def field(self) -> Field:
        return self.fields[0][1]


def _cli_type(annotation: Any, f: Field) -> Any:
    t = config.base_type(annotation)
    choices = config.choices_of(f)
    if choices and t is str:
        t = Literal[tuple(choices)]  # type: ignore[valid-type]
    return t


def _help(d: Declared, tables: Mapping[str, Mapping[str, Any]] | None) -> tuple[str, bool]:
    """Help text of an option and whether click should show its default."""
    f = d.field
    if len(d.fields) == 1:
        text = config.help_of(f)
        if f.metadata.get("required") and not f.metadata.get("argument"):  # click marks arguments itself
            text += " [required]"
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.metadata.get("preset") and tables:
            shown = preset_defaults_text(d.name, tables)
            if shown:
                text += f" [{shown}]"
            return text, False
        show = default is not None and not f.metadata.get("required") and not isinstance(default, bool)
        return text, show
    parts = []
    for owner, fi in d.fields:
        default = fi.default if fi.default is not dataclasses.MISSING else None
        text = config.help_of(fi)
        suffix = f" [{_describe(default)}]" if default is not None and "[" not in text else ""
        parts.append(f"{owner}: {text}{suffix}")
    return "; ".join(parts), False


def _parameter(d: Declared, tables: Mapping[str, Mapping[str, Any]] | None, panel: str | None) -> inspect.Parameter:
    f = d.field
    t = _cli_type(d.annotation, f)
    text, show_default = _help(d, tables)
    default: Any = f.default if f.default is not dataclasses.MISSING else None
    if f.metadata.get("argument"):
        info = typer.Argument(help=text, show_default=False, metavar=f.metadata.get("metavar") or d.name.upper())
        annotation = Annotated[t if f.metadata.get("required") else Optional[t], info]
        return inspect.Parameter(d.name, inspect.Parameter.KEYWORD_ONLY,
                                 default=inspect.Parameter.empty if f.metadata.get("required") else default,
                                 annotation=annotation)
    if t is bool:
        decl = f.metadata.get("flag") or f"{config.flag_name(d.name)}/--no-{d.name.replace('_', '-')}"
        flag_only = "/" not in decl  # a lone ``--force``: typer makes it an on-only flag
        info = typer.Option(decl, help=text, metavar="", show_default=False,
                            rich_help_panel=f.metadata.get("panel") or panel)
        if isinstance(default, bool) and not flag_only:
            info.help = f"{text} [default: {decl.split('/')[0] if default else decl.split('/')[-1]}]"
        return inspect.Parameter(d.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=Annotated[Optional[bool], info])
    decl = f.metadata.get("flag") or config.flag_name(d.name)
    info = typer.Option(decl, help=text, metavar=f.metadata.get("metavar"), show_default=show_default,
                        rich_help_panel=f.metadata.get("panel") or panel, autocompletion=f.metadata.get("complete"))
    if f.metadata.get("required"):
        return inspect.Parameter(d.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=Annotated[Optional[t], info])
    return inspect.Parameter(d.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[Optional[t], info])


def _alias_parameters(d: Declared) -> list[inspect.Parameter]:
    t = _cli_type(d.annotation, d.field)
    params = [inspect.Parameter(f"_alias_{alias.lstrip('-').replace('-', '_')}", inspect.Parameter.KEYWORD_ONLY,
                                default=None, annotation=Annotated[Optional[t], typer.Option(alias, hidden=True)])
              for alias in d.field.metadata.get("aliases", ())]
    if d.field.metadata.get("old_positional"):
        params.append(inspect.Parameter(f"_positional_{d.name}", inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[Optional[t], typer.Argument(
                                            hidden=True, show_default=False, metavar=d.name.upper())]))
    return params


class Parsed:
    """What one invocation gave: values by option name, and which were explicit."""

    def __init__(self, values: dict[str, Any], explicit: set[str], extra: dict[str, Any],
                 recipe_given: set[str] = frozenset(), recipe_source: str = "") -> None:
        self.values = values  # what the command line, --set or --config gave
        self.explicit = explicit  # given on the command line or with --set
        self.extra = extra
        # the options a --config file's user chose (not those its run resolved), still in values
        self.recipe_given = set(recipe_given)
        self.recipe_source = recipe_source

    def build(self, cls: type, **overrides: Any) -> Any:
        """``cls`` from this invocation's values, its own defaults for the rest
        (range-checked and choice-checked)."""
        return config.validate(config.build(cls, {**self.values, **overrides}, "command line"))

    def refuse_others(self, allowed: Iterable[str], candidates: Iterable[str], who: str) -> None:
        """Options of ``candidates`` set on the command line, with --set or by the user of a
        --config recipe, but not in ``allowed``, are a mistake, not a no-op: the same refusal
        wherever they came from (an option set to none with --set is unset)."""
        allowed = set(allowed)
        flags, recipe_names = [], []
        for name in candidates:
            chosen = name in self.explicit or name in self.recipe_given
            if chosen and name not in allowed and self.values.get(name) is not None:
                value = self.values.get(name)
                flags.append(f"--no-{name.replace('_', '-')}" if value is False else config.flag_name(name))
                if name not in self.explicit:
                    recipe_names.append(name)
        if flags:
            where = (f" (set by {self.recipe_source}; --set {recipe_names[0]}=none drops it)"
                     if recipe_names else "")
            raise UsageError(f"{', '.join(flags)} {'is' if len(flags) == 1 else 'are'} not used by {who}{where}")


def collect(classes: Sequence[tuple[Any, ...]]) -> dict[str, Declared]:
    """Declared CLI options of ``classes`` (``(owner label, dataclass[, help panel])``) by
    name; the first declaration of a name gives its type, flag and panel."""
    out: dict[str, Declared] = {}
    for owner, cls, *rest in classes:
        types_ = config.field_types(cls)
        for f in config.declared(cls):
            if not f.metadata.get("cli", True):
                continue
            if f.name in out:
                if all(f is not g for _, g in out[f.name].fields):
                    if config.help_of(f) != config.help_of(out[f.name].field) or owner != out[f.name].fields[0][0]:
                        out[f.name].fields.append((owner, f))
                continue
            out[f.name] = Declared(f.name, types_[f.name], [(owner, f)], rest[0] if rest else None)
    return out


def declared_command(app: typer.Typer, name: str, classes: Sequence[tuple[Any, ...]], *,
                     extra: Sequence[inspect.Parameter] = (), tables: Mapping[str, Mapping[str, Any]] | None = None,
                     recipe: bool = True, check: Callable[[Parsed], None] | None = None
                     ) -> Callable[[Callable[[Parsed], None]], Callable[..., None]]:
    """Register ``func(parsed)`` as command ``name`` with the options of ``classes``.

    ``classes``: ``(owner, dataclass[, help panel])`` in the order ``--help`` lists them; an
    owner label (a method name) marks options only that owner uses: their help names it.
    ``extra``: plain parameters the function reads from ``parsed.extra`` (``--json``).
    ``tables``: preset tables, whose values ``--help`` lists for preset-filled options.
    ``check``: refusals that need the parsed values (another method's options), run before
    anything is logged, so that a refused command prints its error line alone.
    """
    options = collect([(owner or "", cls, *rest) for owner, cls, *rest in classes])
    COMMAND_OPTIONS[name] = set(options)

    def decorator(func: Callable[[Parsed], None]) -> Callable[..., None]:
        params: list[inspect.Parameter] = []
        for d in options.values():
            params.append(_parameter(d, tables, d.panel))
            params += _alias_parameters(d)
        # positional arguments first, as click lists them
        params.sort(key=lambda p: 0 if isinstance(p.annotation.__metadata__[0], typer.models.ArgumentInfo) else 1)
        params += list(extra)
        if recipe:
            params += [inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigFile),
                       inspect.Parameter("set_items", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=SetItems)]
        params.append(inspect.Parameter("_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))
        extra_names = {p.name for p in extra}

        def command(**kwargs: Any) -> None:
            ctx = kwargs.pop("_ctx")
            explicit = {n for n in options if _given(ctx, n)}
            values: dict[str, Any] = {}
            for d in options.values():
                for alias in d.field.metadata.get("aliases", ()):
                    key = f"_alias_{alias.lstrip('-').replace('-', '_')}"
                    if kwargs.get(key) is not None:
                        if d.name in explicit:
                            raise UsageError(f"{alias} is the old name of {config.flag_name(d.name)}; give only one")
                        log(f"note: {alias} is now {config.flag_name(d.name)}")
                        kwargs[d.name] = kwargs[key]
                        explicit.add(d.name)
                if d.field.metadata.get("old_positional") and kwargs.get(f"_positional_{d.name}") is not None:
                    value = kwargs[f"_positional_{d.name}"]
                    if d.name in explicit and kwargs.get(d.name) != value:
                        raise UsageError(f"give the {d.name.upper()} once: {config.flag_name(d.name)} "
                                         f"{kwargs[d.name]} or {value}, not both")
                    log(f"note: `incseg {name} {value}` is now `incseg {name} {config.flag_name(d.name)} {value}`")
                    kwargs[d.name] = value
                    explicit.add(d.name)
            on_command_line = set(explicit)
            set_values = config.parse_set(kwargs.get("set_items") or [], options) if recipe else {}
            recipe_given: set[str] = set()
            source = ""
            notes: list[str] = []
            if recipe and kwargs.get("config_file") is not None:
                source = f"--config {kwargs['config_file']}"
                loaded = config.read_recipe(kwargs["config_file"])
                unknown = sorted(set(loaded.options) - set(options))
                if unknown and not loaded.from_manifest:
                    raise UsageError(f"{source}: no option {', '.join(config.flag_name(n) for n in unknown)} in {name}")
                if loaded.from_manifest:
                    _refuse_other_command(source, name, loaded)
                # what changes the recipe: not --out, nor an option that never changes a result
                overrides = {n for n in explicit | set(set_values)
                             if n != "out" and not options[n].field.metadata.get("volatile")}
                kept = loaded.changed_by(overrides)
                if kept is not loaded:
                    notes.append(f"note: {source} with {', '.join(config.flag_name(n) for n in sorted(overrides))}: "
                                 "the options its run did not set are resolved again (method and preset defaults)")
                for key, value in kept.options.items():
                    if key in options and key != "force":
                        values[key] = config.convert(key, options[key].annotation, value, source)
                recipe_given = kept.set_by_user() & set(values)
            for key, text in set_values.items():
                values[key] = config.convert(key, options[key].annotation, text, "--set")
                explicit.add(key)
            for n in options:  # the command line wins over --set and --config
                if n in on_command_line and kwargs.get(n) is not None:
                    values[n] = kwargs[n]
            missing = [config.flag_name(n) for n, d in options.items()
                       if d.field.metadata.get("required") and values.get(n) is None]
            if missing:
                raise UsageError(f"missing option {', '.join(missing)}")
            parsed = Parsed(values, explicit, {k: kwargs[k] for k in extra_names}, recipe_given - explicit, source)
            if check is not None:
                check(parsed)
            for note in notes:
                log(note)
            func(parsed)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {}
        command.__doc__ = func.__doc__
        command.__name__ = func.__name__
        app.command(name)(command)
        return command

    return decorator


# The options of every command made here, by command name: what tells whose manifest a
# --config file is when its argv does not say (a run started from the Python API).
COMMAND_OPTIONS: dict[str, set[str]] = {}


def _all_command_options() -> dict[str, set[str]]:
    """``COMMAND_OPTIONS`` of every command, their modules imported (``incseg`` imports
    only the module of the command that runs)."""
    import importlib

    from incseg_cli.cli.app import COMMAND_MODULES

    for module in sorted(set(COMMAND_MODULES.values())):
        importlib.import_module(f"incseg_cli.cli.{module}")
    return COMMAND_OPTIONS


def _refuse_other_command(source: str, name: str, loaded: config.Recipe) -> None:
    """A manifest of another command is refused: its options would be half ignored (a
    train-base manifest's model options in train-step) and the rest would mean something else."""
    from incseg_cli.cli.app import COMMAND_MODULES

    writer = loaded.command if loaded.command in COMMAND_MODULES else None
    if writer is None:  # its argv does not name a command: the command whose options it records
        recorded = set(loaded.options)
        fits = [cmd for cmd, names in _all_command_options().items() if recorded <= names]
        writer = None if not fits or name in fits else fits[0]
    if writer is not None and writer != name:
        raise UsageError(f"{source}: is the manifest of a {writer} run, not of {name}; "
                         f"rerun it with incseg {writer} --config, or give {name} its own options")


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether ``name`` was on the command line (not its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT")
