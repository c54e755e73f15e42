"""``python -m appliance`` is the ``ollama`` command (and the frozen binary's entry point)."""

import sys

from appliance.boot import main

if __name__ == "__main__":
    sys.exit(main())
