"""`python -m fedrec_cli` is `fedrec`."""

import sys

from fedrec_cli.main import main

sys.exit(main())
