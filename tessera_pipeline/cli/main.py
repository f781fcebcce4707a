"""The `tessera-pipeline` entry point: a click group that imports each subcommand lazily."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from tessera_pipeline import __version__
from tessera_pipeline.errors import TesseraError

#: Subcommand name -> "module:attribute" under tessera_pipeline.cli.
COMMANDS: dict[str, str] = {
    "demo": "demo:demo",
    "encode-tile": "encode_tile:encode_tile",
    "bench": "bench:bench",
    "tiles": "tiles:tiles",
    "synth": "synth:synth",
    "export": "export:export",
    "verify": "verify:verify",
    "run": "run:run",
    "resume": "resume:resume",
    "status": "status:status",
    "reprocess": "reprocess:reprocess",
    "bench-run": "bench_run:bench_run",
    "plan": "plan:plan",
}


class LazyGroup(click.Group):
    """Imports a subcommand's module only when it is used, so `--help` and each command start fast."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        module = importlib.import_module(f"tessera_pipeline.cli.{module_name}")
        command: click.Command = getattr(module, attr)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        """Turn the pipeline's typed errors (and file-system errors) into one line and exit code 2."""
        try:
            return super().invoke(ctx)
        except (TesseraError, OSError) as exc:
            logging.getLogger(__name__).debug("command failed", exc_info=True)
            click.echo(f"error: {one_line(exc)}", err=True)
            sys.exit(2)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (library messages may span several)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def configure_logging(verbose: int) -> None:
    """Our loggers at WARNING, -v INFO, -vv DEBUG; third-party loggers stay at WARNING unless -vvv."""
    logging.basicConfig(
        level=logging.DEBUG if verbose >= 3 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if verbose:
        logging.getLogger("tessera_pipeline").setLevel(logging.WARNING - 10 * min(verbose, 2))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tessera-pipeline")
@click.option("-v", "--verbose", count=True,
              help="More log output: -v info, -vv debug (this package), -vvv debug of the libraries too.")
def cli(verbose: int) -> None:
    """Compute Tessera embeddings for land tiles, upstream-compatible, on CPUs and GPUs."""
    configure_logging(verbose)
