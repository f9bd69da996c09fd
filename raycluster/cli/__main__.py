"""`python -m raycluster.cli …`: the same as the `raycluster` command."""

from raycluster.cli import main

raise SystemExit(main())
