"""Exit 0 when this Python has h11, wsproto and trio at the versions pinned in the file given ($1).

./your_program.sh asks an active virtual environment's Python this, to run the server with it.
"""

import sys
from importlib.metadata import PackageNotFoundError, version

RUNTIME = ("h11", "wsproto", "trio")
wanted = {}
with open(sys.argv[1]) as pins:
    for line in pins:
        name, _, pinned = line.split("#")[0].strip().partition("==")
        if name.lower() in RUNTIME:
            wanted[name.lower()] = pinned.strip()
try:
    ok = len(wanted) == len(RUNTIME) and all(version(name) == pinned for name, pinned in wanted.items())
except PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
