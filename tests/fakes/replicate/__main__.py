"""``python -m tests.fakes.replicate``: see `standalone`."""

from tests.fakes.replicate.standalone import main

raise SystemExit(main())
