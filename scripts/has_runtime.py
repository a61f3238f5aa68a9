"""Exit 0 when this Python has h11 and trio at the versions pinned in the file given ($1).

./your_program.sh asks an active virtual environment's Python this, to run the server with it.
"""

import sys
from importlib.metadata import PackageNotFoundError, version

wanted = {}
with open(sys.argv[1]) as pins:
    for line in pins:
        name, _, pinned = line.split("#")[0].strip().partition("==")
        if name.lower() in ("h11", "trio"):
            wanted[name.lower()] = pinned.strip()
try:
    sys.exit(0 if all(version(name) == pinned for name, pinned in wanted.items()) and len(wanted) == 2 else 1)
except PackageNotFoundError:
    sys.exit(1)
