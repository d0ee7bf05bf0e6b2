import sys

from kmr_ref.cli import main

sys.exit(main())
