"""The `imgpipe` command line: one module per command group, output and exit codes in output.py."""
