"""`python -m transports`: run the server (see `transports.cli`)."""

import sys

from .cli import main

sys.exit(main())
