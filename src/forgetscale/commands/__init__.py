"""forgetscale command-line subcommands, one module each (see forgetscale.cli)."""
