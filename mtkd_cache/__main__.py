"""`python -m mtkd_cache` (and `torchrun -m mtkd_cache`): the entry point, and the one place the
library package touches the CLI package."""

from mtkd_cache_cli.app import main

main()
