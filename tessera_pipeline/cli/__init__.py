"""Layer 7: the `tessera-pipeline` command, one module per subcommand over shared options."""
