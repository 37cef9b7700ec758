"""Options declared once, as typed dataclasses.

Every stage (and every method) declares its options as a ``kw_only`` dataclass whose fields
are made with ``option(...)``: type (from the annotation), default, help, choices, whether a
preset fills it, whether it changes the result. From these declarations come the command-line
options and their ``--help`` (``cli/declared.py``), the refusal of another method's options,
the ``options`` of ``manifest.json`` (``flat``), the run's fingerprint (``volatile_names``),
range checks (``limits.py``) and re-running a recorded recipe (``--config``/``--set``).

Library code receives the dataclass instances, never dicts: a notebook builds the same
objects the command line does.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import Field, field
from pathlib import Path, PurePath
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence, TypeVar, get_args, get_origin

from incseg_cli.errors import UsageError, CorruptFileError
from incseg_cli.fileio import read_json_object
from incseg_cli.limits import check_options

T = TypeVar("T")


def option(default: Any = None, *, help: str | Callable[[], str],
           choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
           flag: str | None = None, volatile: bool = False, preset: bool = False, panel: str | None = None,
           metavar: str | None = None, aliases: Sequence[str] = (), argument: bool = False,
           required: bool = False, recorded: bool = True, cli: bool = True, limit: Any = None,
           since_default: bool = False, complete: Callable[[str], list[str]] | None = None,
           old_positional: bool = False) -> Any:
    """One declared option.

    ``help``: the text (or a function returning it, for text made from a registry read late).
    ``choices``: the legal values (or a function returning them, for registries read late).
    ``flag``: the command-line spelling when it is not ``--name`` (``--flip/--no-flip``).
    ``volatile``: does not change the result (workers, device): left out of the fingerprint.
    ``preset``: ``None`` means "the preset's value" (``--help`` lists the presets' values).
    ``aliases``: old spellings, still accepted with a one-line note.
    ``argument``: a positional argument. ``required``: no default.
    ``recorded``: goes into the recorded options (``manifest.json``, a bank's attributes).
    ``cli``: shown as an option.
    ``limit``: the legal range (``limits.Limit``) when ``limits.LIMITS`` has none for the name.
    ``since_default``: an option added after runs were recorded, whose default reproduces what
    they did: at its default it stays out of the fingerprint, so those runs still skip.
    ``complete``: shell completion of a partly typed value.
    ``old_positional``: the option was once a positional argument, still accepted with a note.
    """
    meta = {"help": help, "choices": choices, "flag": flag, "volatile": volatile, "preset": preset,
            "panel": panel, "metavar": metavar, "aliases": tuple(aliases), "argument": argument,
            "required": required, "recorded": recorded, "cli": cli, "limit": limit,
            "since_default": since_default, "complete": complete, "old_positional": old_positional}
    if required:
        return field(metadata=meta)
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def help_of(f: Field) -> str:
    """A declared option's help text."""
    text = f.metadata["help"]
    return text() if callable(text) else text


def declared(cls: type) -> list[Field]:
    """The declared options of a dataclass (or instance), in declaration order."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls if isinstance(cls, type) else type(cls))


def choices_of(f: Field) -> tuple[Any, ...]:
    """A field's legal values: declared, or the members of its ``Literal`` type."""
    choices = f.metadata.get("choices")
    if callable(choices):
        choices = choices()
    return tuple(choices) if choices else ()


def base_type(annotation: Any) -> Any:
    """``int`` of ``int | None``, the ``Literal`` itself of ``Literal[...] | None``."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return base_type(args[0]) if len(args) == 1 else annotation
    return annotation


def literal_values(annotation: Any) -> tuple[Any, ...]:
    t = base_type(annotation)
    return get_args(t) if get_origin(t) is Literal else ()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def convert(name: str, annotation: Any, value: Any, where: str) -> Any:
    """``value`` (from JSON or ``--set``'s text) as the declared type, or a UsageError."""
    if value is None:
        return None
    t = base_type(annotation)
    try:
        if t is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if t is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if t is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if t in (Path, PurePath):
            return Path(value)
        if get_origin(t) is Literal:
            allowed = get_args(t)
            if value not in allowed:
                raise UsageError(f"{where}: {flag_name(name)} must be one of {', '.join(map(str, allowed))}, "
                                 f"got {value!r}")
            return value
        if t is str:
            return str(value)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {flag_name(name)} expects {getattr(t, '__name__', t)}, got {value!r}") from None
    return value


def check_choices(obj: Any) -> None:
    """Declared (non-``Literal``) choices of every set field."""
    for f in declared(obj):
        allowed = choices_of(f)
        value = getattr(obj, f.name)
        for item in (value if isinstance(value, list) else [value]):  # a repeatable option: each value
            if allowed and item is not None and item not in allowed:
                raise UsageError(f"{flag_name(f.name)} must be one of {', '.join(map(str, allowed))}, got {item!r}")


def validate(obj: Any) -> Any:
    """Range checks (limits.py) and choices of every set field; returns ``obj``."""
    check_options({f.name: getattr(obj, f.name) for f in declared(obj)})
    for f in declared(obj):
        value = getattr(obj, f.name)
        problem = f.metadata["limit"].problem(value) if f.metadata.get("limit") and value is not None else None
        if problem is not None:
            raise UsageError(f"{flag_name(f.name)} {problem}")
    check_choices(obj)
    return obj


def given(*objs: Any) -> set[str]:
    """The declared options of ``objs`` that are set (not ``None``) before resolution: what
    the user gave, or a fixed declared default."""
    return {f.name for obj in objs if obj is not None for f in declared(obj) if getattr(obj, f.name) is not None}


def fill(obj: T, *layers: Mapping[str, Any]) -> T:
    """``obj`` with each unset (``None``) option taken from the first layer that has it:
    the one precedence rule, command line, then method, then preset."""
    changes = {}
    for f in declared(obj):
        if getattr(obj, f.name) is not None:
            continue
        for layer in layers:
            if layer.get(f.name) is not None:
                changes[f.name] = layer[f.name]
                break
    return dataclasses.replace(obj, **changes) if changes else obj


def plain(value: Any) -> Any:
    """A value as JSON has it (paths as strings)."""
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def flat(*objs: Any) -> dict[str, Any]:
    """The recorded options of ``objs`` as one JSON-ready dict: the manifest's ``options``."""
    out: dict[str, Any] = {}
    for obj in objs:
        if obj is None:
            continue
        for f in declared(obj):
            if f.metadata.get("recorded", True):
                out[f.name] = plain(getattr(obj, f.name))
    return out


def volatile_names(*classes: type) -> set[str]:
    """Options that never change a result: a rerun that changes only these resumes or skips."""
    return {f.name for cls in classes for f in declared(cls) if f.metadata.get("volatile")}


def unfingerprinted(*objs: Any) -> set[str]:
    """The options of ``objs`` left out of the fingerprint: volatile ones, and options
    declared ``since_default`` while they hold their default."""
    names = volatile_names(*(type(o) for o in objs))
    for obj in objs:
        for f in declared(obj):
            if f.metadata.get("since_default") and getattr(obj, f.name) == f.default:
                names.add(f.name)
    return names


def build(cls: type[T], values: Mapping[str, Any], where: str = "options") -> T:
    """An instance of ``cls`` from a mapping of option names (unknown names ignored),
    each value converted to its declared type."""
    types_ = field_types(cls)
    kwargs = {f.name: convert(f.name, types_[f.name], values[f.name], where)
              for f in dataclasses.fields(cls) if f.name in values}
    missing = [f.name for f in declared(cls)
               if f.metadata.get("required") and f.name not in kwargs]
    if missing:
        raise UsageError(f"{where}: missing {', '.join(flag_name(n) for n in missing)}")
    return cls(**kwargs)


def build_checked(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """``build``, refusing a name that is not an option of ``cls`` (UsageError naming
    ``where``), then ``validate``: options a caller passes by name, as the Python API does."""
    unknown = sorted(set(values) - {f.name for f in declared(cls)})
    if unknown:
        raise UsageError(f"{', '.join(unknown)}: not options of {where}")
    return validate(build(cls, values, where))


@dataclasses.dataclass
class Recipe:
    """What ``--config FILE`` holds: options, whether they are a run's manifest (whose
    entries that are not options of the command are ignored rather than refused), and for a
    manifest the names its user gave (None: unknown, an older manifest)."""

    options: dict[str, Any]
    from_manifest: bool
    given: set[str] | None = None
    command: str | None = None  # a manifest's: the first word of its argv after the program

    def set_by_user(self) -> set[str]:
        """The options its user chose: a plain recipe's all, a manifest's ``given`` ones (all
        of them for a manifest too old to say)."""
        if not self.from_manifest or self.given is None:
            return set(self.options)
        return set(self.options) & self.given

    def changed_by(self, overrides: set[str]) -> "Recipe":
        """A manifest's resolved values hold defaults of the method and preset it ran with,
        and values derived from others (WILSON's --lr-head from --lr): once ``overrides``
        change the recipe, only the options its user gave are kept, and the rest resolve
        again around the overrides."""
        if not overrides or self.given is None:
            return self
        return Recipe({k: v for k, v in self.options.items() if k in self.given}, True, self.given, self.command)


def read_recipe(path: Path) -> Recipe:
    """The options of ``--config FILE``: a run's ``manifest.json`` or a JSON object of options.
    A path that is no file is a usage error (exit 2), a file that cannot be read or is not a
    JSON object a corrupt file (exit 5): one line either way."""
    path = Path(path)
    if path.is_dir():
        hint = f" (its manifest: --config {path / 'manifest.json'})" if (path / "manifest.json").is_file() else ""
        raise UsageError(f"--config {path}: is a directory, not a JSON file{hint}")
    if not path.exists():
        raise UsageError(f"--config {path}: no such file")
    try:
        data = read_json_object(path, "--config file", "")
    except OSError as err:
        raise CorruptFileError(f"--config {path}: cannot be read ({err.strerror or type(err).__name__})") from None
    if isinstance(data.get("options"), dict) and "fingerprint" in data:
        given = data.get("given_options")
        given_names = {g for g in given if isinstance(g, str)} if isinstance(given, list) else None
        return Recipe(dict(data["options"]), True, given_names, _recorded_command(data))
    return Recipe(data, False)


def _recorded_command(manifest: Mapping[str, Any]) -> str | None:
    """The incseg command that wrote a run's manifest, as its ``argv`` names it (None when
    it does not say: a manifest written from the Python API)."""
    argv = manifest.get("argv")
    if not isinstance(argv, list):
        return None
    return next((a for a in argv[1:] if isinstance(a, str) and not a.startswith("-")), None)


def parse_set(items: Iterable[str], known: Mapping[str, Any]) -> dict[str, Any]:
    """``--set key=value`` items as ``{name: text}``; keys may be spelled ``lr`` or ``--lr``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        name = key.strip().lstrip("-").replace("-", "_")
        if not sep or not name:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr=0.01")
        if name not in known:
            raise UsageError(f"--set {item!r}: no option {flag_name(name)} in this command")
        out[name] = None if value.strip().lower() in ("none", "null") else value
    return out
