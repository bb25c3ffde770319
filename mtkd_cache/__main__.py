"""`python -m mtkd_cache` (and `torchrun -m mtkd_cache`): the entry point, and the one place the
library package touches the CLI package."""

from mtkd_cache_cli.app import main

if __name__ == "__main__":  # not when a spawned worker (sweep --parallel) imports this module as its main
    main()
