"""Subcommands of the `bimanual-vla` CLI, one module each (see bimanual_vla.cli.main)."""
