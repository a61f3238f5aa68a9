"""What ./your_program.sh runs: this checkout's server, in the directory it was started from.

`python -m transports` would need the checkout as the current directory; the user's own
directory must stay current (their app's relative paths, `--app-dir`'s default).
"""

import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout, not scripts/

from transports.cli import main  # noqa: E402

sys.exit(main())
