"""The `pem` command line (`main`) and its subcommands, one module each (`train`, `evaluate`, `convert`, `export`,
`plot`): thin `argparse` mains over the library. Each also runs as `python -m transformers_pem.cli.<name> --help`."""
