"""``python -m kmr_ref.conformance``: the per-clause conformance report (``report.py``)."""

import sys

from kmr_ref.conformance.report import main

sys.exit(main())
