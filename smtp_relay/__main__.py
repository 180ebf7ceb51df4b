"""``python -m smtp_relay``: the same as the ``hotclicks-relay`` command."""

from .cli import main

raise SystemExit(main())
