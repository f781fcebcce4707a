"""`python -m tessera_pipeline.cli` runs the `tessera-pipeline` command."""

from tessera_pipeline.cli.main import cli

cli()
