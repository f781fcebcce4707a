"""The `tessera-pipeline` entry point: a click group that imports each subcommand lazily."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import IO, Any

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
    "manifest": "manifest:manifest",
    "stac": "stac:stac",
    "sample": "sample:sample",
    "mosaic": "mosaic:mosaic",
    "run": "run:run",
    "resume": "resume:resume",
    "status": "status:status",
    "reprocess": "reprocess:reprocess",
    "bench-run": "bench_run:bench_run",
    "plan": "plan:plan",
}


#: click's "no arguments: here is the help" error (click >= 8.2) stays as click shows it: the full help.
_SHOW_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class OneLineUsageError(click.ClickException):
    """A usage error shown as the CLI's one `error:` line on stderr (exit code 2), not click's usage block."""

    exit_code = 2

    def show(self, file: IO[Any] | None = None) -> None:
        """Print `error: <message>` as one line."""
        click.echo(f"error: {self.format_message()}", file=file, err=file is None)


def one_line_usage_error(exc: click.UsageError) -> OneLineUsageError:
    """click's usage error as one line naming the command's --help, e.g. `(see `tessera-pipeline tiles --help`)`."""
    names: list[str] = []
    ctx = exc.ctx
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    command = " ".join(["tessera-pipeline", *reversed(names), "--help"])
    return OneLineUsageError(f"{one_line(exc)} (see `{command}`)")


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

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        """Parse the group's own options; a usage error there (`--no-such-flag`) is one line too."""
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            if isinstance(exc, _SHOW_HELP):
                raise
            raise one_line_usage_error(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        """Turn the pipeline's typed errors, file-system errors and usage errors into one line and exit code 2."""
        try:
            return super().invoke(ctx)
        except (TesseraError, OSError) as exc:
            logging.getLogger(__name__).debug("command failed", exc_info=True)
            click.echo(f"error: {one_line(exc)}", err=True)
            sys.exit(2)
        except click.UsageError as exc:
            if isinstance(exc, _SHOW_HELP):
                raise
            raise one_line_usage_error(exc) from exc


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (library messages may span several)."""
    message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
    text = " ".join(part.strip() for part in message.splitlines() if part.strip())
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
