"""The `bimanual-vla` command line: one module per subcommand in commands/."""
