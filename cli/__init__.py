"""The `mtkd-cache` command line: argument parsing, progress display, errors to exit codes. Thin."""
