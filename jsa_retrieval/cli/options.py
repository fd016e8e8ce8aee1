"""Options several `jsar` commands share, spelled once: --device, --checkpoint, --workers, --clips; and the
root's -q as a command sees it."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

EXAMPLE = "\n\n\b\nExample:\n  "


def device_option(help: str = "cpu, cuda, cuda:1 ... (default: cuda when available).") -> Callable:
    """--device, as every command that runs a model spells it."""
    return click.option("--device", help=help)


def checkpoint_option(required: bool = True, help: str | None = None) -> Callable:
    """--checkpoint: an existing file."""
    return click.option("--checkpoint", required=required, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        help=help)


def workers_option(default: int | None = 2, help: str = "DataLoader worker processes.") -> Callable:
    """--workers: processes decoding clips (0: in the main process)."""
    return click.option("--workers", type=click.IntRange(min=0), default=default, show_default=default is not None,
                        help=help)


def clips_option(default: int | None, help: str) -> Callable:
    """--clips, the number of clips everywhere; `--n` stays as a hidden, deprecated spelling of it."""
    def warn(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
        if value is not None:
            click.echo("warning: --n is deprecated; use --clips", err=True)
            ctx.meta["deprecated_n"] = value
        return value

    def apply(function: Callable) -> Callable:
        function = click.option("--n", "deprecated_n", type=click.IntRange(min=1), hidden=True, expose_value=False,
                                callback=warn)(function)
        return click.option("--clips", "n_clips", type=click.IntRange(min=1), default=default,
                            show_default=default is not None, help=help)(function)
    return apply


def clip_count(n_clips: int | None) -> int | None:
    """The clip count a command was given: --clips, or the deprecated --n."""
    return click.get_current_context().meta.get("deprecated_n", n_clips)


def option_group(*decorators: Callable) -> Callable:
    """Several click options applied as one decorator, in the order they are listed (as help shows them)."""
    def apply(function: Callable) -> Callable:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function
    return apply


def list_option(values: tuple[str, ...]) -> list[str]:
    """A repeatable option's values, each of which may also hold several separated by commas."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def is_quiet() -> bool:
    """`jsar -q ...`: also no progress bars where a command can turn them off."""
    return click.get_current_context().find_root().params.get("quiet", 0) > 0
