"""``python -m serving``: run the model server (see ``serving.server``)."""

from __future__ import annotations

from serving.server import main

raise SystemExit(main())
