"""`python -m koi_train` (and `torchrun -m koi_train`) is the `koi-train` command."""

from .cli import main

raise SystemExit(main())
