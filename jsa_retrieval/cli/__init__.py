"""The `jsar` command line. Each command parses its arguments, calls one library function, and prints.

One module per command group (data, train, localize, search, eval, demo, bench); this one holds the root group,
the logging set-up and the console entry point. Commands import the library they call inside their function,
so `import jsa_retrieval.cli` stays light (no torch, FAISS, training, indexing or evaluation).

Errors a user can cause (bad paths, unreadable files, wrong checkpoints) end with one line on stderr and a
non-zero exit code, never a traceback.
"""
from __future__ import annotations

import logging
import os
import sys

import click

from .. import __version__
from ..errors import JsarError
from .bench import bench
from .data import data_group, synth
from .demo import demo
from .eval import eval_group
from .localize import localize
from .search import index, query, serve
from .train import calibrate_presence_command, train

__all__ = ["cli", "configure_logging", "main"]

PACKAGES = ("jsa_retrieval", "training", "indexing", "evaluation")


class _MessageFormatter(logging.Formatter):
    """Progress messages as plain lines; warnings and errors say what they are."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def configure_logging(verbosity: int = 0) -> None:
    """jsar's own loggers to stderr: INFO by default, DEBUG with -v, warnings only with -q; other libraries'
    loggers stay at WARNING. Safe to call again (the handler is replaced, and follows the current stderr)."""
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MessageFormatter("%(message)s"))
    handler._jsar = True  # type: ignore[attr-defined]
    for name in PACKAGES:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_jsar", False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="jsar")
@click.option("-v", "--verbose", "verbose", count=True, help="More detail in the log (debug messages).")
@click.option("-q", "--quiet", "quiet", count=True,
              help="Only warnings and errors in the log; no progress bars in train, index, eval reproduce, realsound.")
def cli(verbose: int, quiet: int) -> None:
    """jsar: find where a sound comes from, search images by sound and sounds by image.

    Joint Slot Attention (CVPR 2025) for self-supervised sound source localization, with an HDF5 embedding
    store and FAISS indexes for cross-modal retrieval.
    """
    configure_logging(verbose - quiet)


for _command in (synth, train, localize, index, query, serve, eval_group, calibrate_presence_command, demo, bench,
                 data_group):
    cli.add_command(_command)


def main() -> None:
    """Console entry point: runs the click group, turning expected failures into one-line errors."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")  # other libraries
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except (JsarError, OSError, ValueError, ImportError) as error:  # bad input; any other error is a bug
        if os.environ.get("JSAR_DEBUG"):
            raise
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
