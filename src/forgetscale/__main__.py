import sys

from forgetscale.cli import main

sys.exit(main())
