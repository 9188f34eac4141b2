"""`python -m transformers_pem.cli ...`: the `pem` command line without its console script."""

import sys

from .main import main

sys.exit(main())
