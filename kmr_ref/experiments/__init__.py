"""The paper's suggested experiments as commands (``kmr experiment e1|e2|e3``): each writes a
markdown table (no timings: byte-identical on any machine of this kind), a PNG (matplotlib) and
the raw JSON (timings live only there) under ``docs/results/`` or ``--out``."""
