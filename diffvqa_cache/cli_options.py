"""The command line's machinery, beside the commands in `cli.py`: plain 80-column `--help` (`Typer`), options
generated from the config dataclasses (`options_from`), known errors as one line (`known_errors`), `--set`
parsing, logging setup and the dataset loading the commands share. Imports typer, never torch (`--help`
stays fast)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from diffvqa_cache.config import Config

DEBUG = {"on": bool(os.environ.get("DIFFVQA_DEBUG"))}  # --debug or $DIFFVQA_DEBUG: tracebacks instead of one line


class _PlainHelp:
    """`--help` as click writes it: option names in full, each description wrapped beside them (at most 30
    columns in) or below them, 80 columns at most. (Typer's rich tables cut option names with "…" and
    squeeze descriptions beside the `--no-X` forms in an 80-column terminal.) Errors keep typer's look."""

    def format_help(self, ctx, formatter):
        mode, self.rich_markup_mode = self.rich_markup_mode, None
        try:
            return super().format_help(ctx, formatter)
        finally:
            self.rich_markup_mode = mode


def _section(formatter, heading: str, rows: list[tuple[str, str]]) -> None:
    """A titled list of (name, description) rows; a long title wraps like any text."""
    import textwrap

    formatter.write_paragraph()
    formatter.write("\n".join(textwrap.wrap(heading + ":", formatter.width - formatter.current_indent,
                                             initial_indent=" " * formatter.current_indent,
                                             subsequent_indent=" " * (formatter.current_indent + 2))) + "\n")
    with formatter.indentation():
        formatter.write_dl(rows)


class HelpCommand(_PlainHelp, typer.core.TyperCommand):
    def format_options(self, ctx, formatter):
        """Arguments, then the options, one section per panel (`rich_help_panel`)."""
        sections: dict[str, list] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record:
                name = "Arguments" if param.param_type_name == "argument" else \
                    getattr(param, "rich_help_panel", None) or "Options"
                sections.setdefault(name, []).append(record)
        for name in sorted(sections, key=lambda n: n != "Arguments"):
            _section(formatter, name, sections[name])


class HelpGroup(_PlainHelp, typer.core.TyperGroup):
    def format_commands(self, ctx, formatter):
        """Each command with the first sentence of its help, wrapped (not cut to the line)."""
        rows = [(name, cmd.get_short_help_str(limit=1000)) for name in self.list_commands(ctx)
                if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden]
        if rows:
            _section(formatter, "Commands", rows)


class Typer(typer.Typer):
    """typer.Typer whose commands and groups write plain `--help` (`HelpCommand`, `HelpGroup`)."""

    def __init__(self, **kwargs):
        super().__init__(cls=HelpGroup, **kwargs)

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or HelpCommand, **kwargs)




def options_from(cls, panel: str, skip: tuple[str, ...] = (), defaults: dict | None = None, build=None,
                 arg: str = "cfg", overrides: str | None = None):
    """Give a command one option per field of the config dataclass `cls` (help text from the field's
    declaration; default from the field or `defaults`) and pass them to it built into `arg` (by `build`,
    else `cls.from_options` when defined, else `cls`), so a new setting is declared once, in the dataclass.

    `overrides` (a key prefix such as "train."): the options show the field's default but are None unless
    given, and `arg` is the dict of the given ones ({"train.epochs": 5}), to apply over a config file."""

    def optional(kind):
        args = typing.get_args(kind)
        if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
            return Optional[next(a for a in args if a is not type(None))]
        return kind

    def decorate(fn):
        own = inspect.signature(fn, eval_str=True)
        hints = typing.get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if f.name not in skip and f.name not in own.parameters
                  and not (isinstance(f.default_factory, type) and issubclass(f.default_factory, Config))]
        defaults_ = {f.name: f.default for f in fields} | (defaults or {})
        helps = {f.name: f.metadata.get("help") for f in fields}
        if overrides is not None:  # the option is None unless given; its help says the setting's default
            helps = {f.name: helps[f.name] + _shown_default(f.name, defaults_[f.name]) for f in fields}
            defaults_ = {f.name: None for f in fields}
        added = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=defaults_[f.name],
                                   annotation=Annotated[optional(hints[f.name]) if overrides is None
                                                        else Optional[optional(hints[f.name])], typer.Option(
                                       help=helps[f.name], rich_help_panel=panel)])
                 for f in fields]
        make = build or getattr(cls, "from_options", cls)
        if overrides is not None:
            make = functools.partial(_given, overrides)

        @functools.wraps(fn)
        def command(**kwargs):
            from diffvqa_cache.errors import UserInputError

            values = {f.name: kwargs.pop(f.name) for f in fields}
            try:
                cfg = make(**values)
            except UserInputError:
                raise
            except (TypeError, ValueError) as exc:
                raise UserInputError(str(exc)) from None
            return fn(**{arg: cfg}, **kwargs)

        command.__signature__ = own.replace(parameters=[p for p in own.parameters.values() if p.name != arg] + added)
        return command

    return decorate


def _given(prefix: str, **values) -> dict:
    """The options given on the command line, as overrides ({"train.epochs": 5})."""
    return {prefix + k: v for k, v in values.items() if v is not None}


def _shown_default(name: str, value) -> str:
    """"  [default: X]" for a default the option itself does not carry, as typer writes its own ("" for None:
    the help text says what then happens)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        value = name.replace("_", "-") if value else "no-" + name.replace("_", "-")
    return f"  [default: {value}]"


def known_errors(fn):
    """Known errors become one line on stderr and an exit code; tracebacks only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from diffvqa_cache.errors import DiffVQAError

        try:
            return fn(*args, **kwargs)
        except (DiffVQAError, FileNotFoundError) as exc:
            if DEBUG["on"]:
                raise
            code = getattr(exc, "exit_code", 2)
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code) from None

    return wrapper


def setup_logging(debug: bool, verbose: bool) -> None:
    """--debug and --verbose: tracebacks, and how much the libraries log (dask's workers included)."""
    DEBUG["on"] = DEBUG["on"] or debug
    if not verbose:  # dask's own logging config (read at import, also by its worker processes)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    for noisy in ("diffusers", "transformers", "distributed", "h5py"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def load_checked_dataset(dataset: str, root: Optional[Path], labels: Optional[Path], limit: Optional[int],
                          video_column: Optional[str] = None, mos_column: Optional[str] = None, allow_problems: bool = False):
    """The dataset, checked (problems stop it unless `allow_problems`), with what was read said on stderr."""
    from diffvqa_cache.datasets import load_dataset
    from diffvqa_cache.progress import err

    data = load_dataset(dataset, root, labels=labels, limit=limit, video_column=video_column, mos_column=mos_column)
    data.check(allow_problems)
    err.print(data.summary())
    err.print(data.describe_labels(), highlight=False, markup=False)
    for line in data.problems[:20]:
        err.print(f"[yellow]problem[/] {line}")
    if len(data.problems) > 20:
        err.print(f"[yellow]... and {len(data.problems) - 20} more problems[/]")
    for line in data.warnings[:20]:
        err.print(f"[yellow]warning[/] {line}")
    if len(data.warnings) > 20:
        err.print(f"[yellow]... and {len(data.warnings) - 20} more warnings[/]")
    return data



def parse_value(text: str):
    """A --set value as YAML reads it (5, 1e-4, true, [0, 2], text)."""
    import yaml

    return yaml.safe_load(text)


def parse_sets(items: Optional[list[str]]) -> dict:
    """--set NAME=VALUE items as overrides ({"train.epochs": 5})."""
    overrides = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set {item!r}: expected NAME=VALUE")
        name, value = item.split("=", 1)
        overrides[name.strip()] = parse_value(value)
    return overrides
