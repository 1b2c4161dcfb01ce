"""`python -m loadtest SCENARIO [options]`: the same as `sitebuilder-gateway bench`."""

import sys

from loadtest.cli import main

sys.exit(main())
