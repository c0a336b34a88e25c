"""``python -m mixq.cli``: the ``mixq`` command."""

import sys

from mixq.cli.app import main

sys.exit(main())
