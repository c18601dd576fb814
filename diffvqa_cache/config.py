"""Typed settings: the base every config dataclass shares (`Config`, `setting`, the type checks).

The settings themselves live with what they configure: `cache.settings` (extract, the cache's key),
`extraction.settings` (adapt), `training.settings` (fit, training), `training.regressor.config` (the model).

Each setting is declared once, with its help text and its role (`setting(default, help, numbers=False)`):
the CLI builds its options from these declarations (`cli_options.options_from`), every artifact saves the
dataclass beside itself, and fingerprints, resume checks and sweep task ids take the settings that change
the numbers from them (`Config.fields_where`, `Config.numbers`). This module imports no torch, so `--help`
stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import types
import typing
from pathlib import Path
from typing import ClassVar

from diffvqa_cache.errors import UserInputError


# What a field's declaration says about it besides its help text (`setting`), with the value a field
# declared without it has. The one rule for what changes the numbers: fingerprints, every resume check,
# sweep task ids and `reproduce` derive their sets of fields from these (`Config.fields_where`, `numbers`).
ROLES = {
    "numbers": True,  # False: only places or schedules the work (device, batch sizes of inference, workers,
                      # memory, checks), the results stay the same up to float noise; never checked or hashed
    "weights": False,  # names weights (model, revision, Controller): the numbers follow from them, and caches
                       # identify them by the content hash of the weights (ModelIdentity), not by the name
    "extendable": False,  # how far a run goes (adapt's max_steps): a resumed run may change it, because the
                          # steps already taken are the same whatever it is
    "splits": False,  # defines the evaluation splits: one value for every configuration of a sweep
}


def setting(default, help: str, *, numbers: bool = True, weights: bool = False, extendable: bool = False,
            splits: bool = False, **kwargs):
    """A dataclass field with its help text (shown by the CLI option built from it) and its role (`ROLES`):
    `numbers=False` for a field that only places or schedules the work."""
    metadata = {"help": help, "numbers": numbers, "weights": weights, "extendable": extendable, "splits": splits}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def role(f: dataclasses.Field, name: str) -> bool:
    """The field's `ROLES` entry `name` as declared, else its default."""
    return f.metadata.get(name, ROLES[name])


class Config:
    """Base of the settings dataclasses: `to_dict`/`from_dict` (JSON-able; unknown keys refused with
    `UserInputError`), `save`/`load` (a JSON file), and `replace`. Validation lives in `__post_init__`
    and raises `UserInputError` too."""

    RENAMED: ClassVar[dict[str, str]] = {}  # old key -> field name, so files of older versions still load

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict, what: str | None = None):
        """Build from JSON/YAML data: every value is checked against its field's declared type (ints are
        numbers, lists become tuples, numeric text is a number: PyYAML reads `1e-3` as text), and missing
        or unknown keys are refused; each problem is one `UserInputError` naming the key and the value."""
        return cls._from_data(data, what or cls.__name__, what, "")

    @classmethod
    def _from_data(cls, data, what: str, top: str | None, key: str):
        if not isinstance(data, dict):
            raise UserInputError(f"{what}: expected a mapping of settings, got {type(data).__name__}")
        data = {cls.RENAMED.get(k, k): v for k, v in data.items()}
        hints = typing.get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if f.init]
        known = {f.name for f in fields}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserInputError(f"unknown {what} setting(s) {unknown}; known: {sorted(known)}")
        missing = [key + f.name for f in fields if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise UserInputError(f"{top + ': ' if top else ''}missing setting(s) {missing}")
        values = {}
        for name, value in data.items():
            kind = hints[name]
            nested = _config_class(kind)
            if nested is not None and isinstance(value, dict):
                value = nested._from_data(value, f"{what}.{name}", top, f"{key}{name}.")
            else:
                try:
                    value = _typed(value, kind)
                except TypeError:
                    raise UserInputError(f"{top + ': ' if top else ''}setting {key}{name}={value!r}: expected "
                                         f"{_expected(kind)}") from None
            values[name] = value
        return cls(**values)

    def save(self, path: Path | str) -> None:
        from diffvqa_cache.files import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: Path | str):
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise UserInputError(f"{path}: cannot read {cls.__name__} ({exc})") from None
        what = f"{cls.__name__} in {path}"
        try:
            return cls.from_dict(data, what)
        except UserInputError as exc:  # a check of __post_init__: say which file holds the value
            if str(exc).startswith(what):
                raise
            raise UserInputError(f"{what}: {exc}") from None

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def fields_where(cls, **roles: bool) -> tuple[str, ...]:
        """Names of the fields whose declared roles (`ROLES`) have these values: `fields_where(numbers=False)`
        are the fields that only place or schedule the work."""
        for name in roles:
            if name not in ROLES:
                raise ValueError(f"unknown role {name!r}; known: {sorted(ROLES)}")
        return tuple(f.name for f in dataclasses.fields(cls) if all(role(f, k) == v for k, v in roles.items()))

    def numbers(self, resumed: bool = False) -> dict:
        """The settings that change the numbers (`to_dict` without the `numbers=False` fields; nested configs
        likewise): what a run that continues or reuses earlier results must share with them. `resumed`:
        also without the `extendable` fields (how far the run goes)."""
        out = {}
        for f in dataclasses.fields(self):
            if not role(f, "numbers") or (resumed and role(f, "extendable")):
                continue
            value = getattr(self, f.name)
            out[f.name] = value.numbers(resumed) if isinstance(value, Config) else _plain(value)
        return out


_NAMES = {bool: ("true or false", "true/false values"), int: ("an integer", "integers"),
          float: ("a number", "numbers"), str: ("a string", "strings")}


def _config_class(kind) -> type | None:
    """The Config class a field of type `kind` holds (`X` or `X | None`), else None."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        classes = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = classes[0] if len(classes) == 1 else None
    return kind if isinstance(kind, type) and issubclass(kind, Config) else None


def _typed(value, kind):
    """`value` as a value of the declared type `kind` (lists as tuples where a tuple is declared, numeric text
    as a float where a number is); TypeError where it is not one. Types other than these are not checked."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _typed(value, arg)
            except TypeError:
                pass
        raise TypeError
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return value  # an int stays an int: 1 == 1.0, and fingerprints hash the value as it was given
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    elif (origin or kind) in (tuple, list):
        if isinstance(value, (list, tuple)):
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(value) != len(args):
                    raise TypeError
                items = [_typed(v, a) for v, a in zip(value, args)]
            else:
                items = [_typed(v, args[0]) for v in value] if args else list(value)
            return tuple(items) if (origin or kind) is tuple else items
    elif (origin or kind) is dict:
        if isinstance(value, dict):
            return {_typed(k, args[0]): _typed(v, args[1]) for k, v in value.items()} if len(args) == 2 else value
    elif isinstance(kind, type) and issubclass(kind, Config):
        pass  # a nested config is a mapping (built by from_dict)
    else:
        return value
    raise TypeError


def _expected(kind) -> str:
    """What a value of type `kind` looks like, for messages ("an integer", "a list of 2 numbers" ...)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        named = " or ".join(_expected(a) for a in args if a is not type(None))
        return named + (" or null" if type(None) in args else "")
    if (origin or kind) in (tuple, list):
        if not args:
            return "a list"
        of = _NAMES.get(args[0], ("", "values"))[1]
        return f"a list of {len(args)} {of}" if origin is tuple and args[-1] is not Ellipsis else f"a list of {of}"
    if (origin or kind) is dict or (isinstance(kind, type) and issubclass(kind, Config)):
        return "a mapping"
    return _NAMES.get(kind, (getattr(kind, "__name__", str(kind)),))[0]


def _plain(value):
    """JSON-able form of a field value (nested configs as dicts, tuples as lists)."""
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def one_of(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise UserInputError(f"{name} must be one of {allowed}, got {value!r}")


def at_least(owner: Config, names: tuple[str, ...], low: float) -> None:
    for name in names:
        if getattr(owner, name) < low:
            raise UserInputError(f"{name} must be >= {low}, got {getattr(owner, name)}")
