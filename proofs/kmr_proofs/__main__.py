"""``python -m kmr_proofs`` = ``kmr prove`` (same options)."""

import sys

from kmr_ref.cli import main

sys.exit(main(["prove", *sys.argv[1:]]))
