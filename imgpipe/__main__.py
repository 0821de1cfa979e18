"""`python -m imgpipe`: the same as the `imgpipe` console script."""

import sys

from imgpipe.cli.main import main

sys.exit(main())
