"""The ``kmr`` command line: every subcommand is wired; ``kmr conform`` forwards to the report."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from kmr_ref.cli import SUBCOMMANDS, build_parser, main


def test_every_subcommand_has_help() -> None:
    parser = build_parser()
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as e, contextlib.redirect_stdout(io.StringIO()):
            if name == "conform":  # forwarded whole to the report's own parser
                main([name, "--help"])
            else:
                parser.parse_args([name, "--help"])
        assert e.value.code == 0, name


def test_conform_forwards_and_passes() -> None:
    """KMR.trace.record KMR.prune.tie-break: `kmr conform --json` runs every frozen vector on the
    reference; all clauses pass and the exit code is 0."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["conform", "--json"])
    assert rc == 0
    rep = json.loads(buf.getvalue())
    assert rep["summary"]["ok"] is True and rep["impl"] == "reference" and rep["failures"] == []
    for cid in ("KMR.alg1.strict-progress", "KMR.prune.tie-break", "KMR.quant.rounding"):
        assert rep["summary"]["clauses"][cid]["status"] == "pass" and rep["summary"]["clauses"][cid]["pass"] > 0
