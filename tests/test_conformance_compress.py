"""Compress-config vectors (``spec/vectors/0.1.0/compress_config.json``, kind ``compress-config``):
a TOML text in, the normalized config or the error clause and key out
(``kmr_ref/conformance/compress_runner.py``).

The reference passes every vector but those in its own expected-failures file
(``kmr_ref/conformance/reference.xfail``: a bug a vector found, reported; strict). Deviations are
caught on the vector's primary clause: a message that does not name the key
(KMR.compress.config), MB read as 2^20 bytes (KMR.compress.budget-units), the deepest violation
reported instead of the shallowest (KMR.compress.config), a default max_steps other than 100
(KMR.compress.config), phase names without the -2 suffix (KMR.compress.phases), a nondeterministic
reader (KMR.rule.deterministic).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kmr_ref import SPEC_VERSION
from kmr_ref.conformance.compress_runner import reference_config
from kmr_ref.conformance.report import build_report, run_all
from kmr_ref.conformance.vectors import ADAPTER_RUNNERS, BUILTIN_XFAIL, RunOptions, XFail, load_vectors

ROOT = Path(__file__).resolve().parent.parent
FILE = ROOT / "spec" / "vectors" / SPEC_VERSION / "compress_config.json"
XFAIL = XFail.load(ROOT / "kmr_ref" / "conformance" / BUILTIN_XFAIL["reference"])
Adapter = Callable[[Mapping[str, Any]], dict[str, Any]]


def _blame(adapter: Adapter) -> dict[str, str]:
    rep = build_report(run_all([FILE], "a", {"compress-config": ADAPTER_RUNNERS["compress-config"](adapter)}), "a")
    return {f["id"]: f["clause"] for f in rep["failures"]}


def _reference_failures() -> dict[str, str]:
    return _blame(reference_config)


def test_reference_passes_but_its_listed_bugs() -> None:
    blame = _reference_failures()
    assert all(XFAIL.reason(v) for v in blame), blame
    rep = build_report(run_all([FILE], options=RunOptions(xfail=XFAIL)), "reference")
    assert rep["summary"]["ok"]
    assert rep["summary"]["totals"]["pass"] + rep["summary"]["totals"]["xfail"] == len(load_vectors(FILE))


def _deviant(change: Callable[[Mapping[str, Any], dict[str, Any]], dict[str, Any]]) -> Adapter:
    def run(inp: Mapping[str, Any]) -> dict[str, Any]:
        return change(inp, reference_config(inp))

    return run


def _new_failures(adapter: Adapter) -> dict[str, str]:
    base = _reference_failures()
    return {k: v for k, v in _blame(adapter).items() if k not in base}


def test_message_must_name_the_key() -> None:
    def no_key(inp: Mapping[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        return {"error": out["error"], "message": "refused"} if "error" in out else out

    blame = _new_failures(_deviant(no_key))
    errors = [v for v in load_vectors(FILE) if "error" in v["expected"] and v["expected"]["key"] is not None
              and not XFAIL.reason(v["id"])]
    assert blame == {v["id"]: v["primary"] for v in errors}


def test_binary_megabytes_caught_on_budget_units() -> None:
    def binary_mb(inp: Mapping[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        if '"18MB"' in inp["toml"] and "config" in out:
            out["config"]["budget"] = {"absolute": 18 * 2**20 * 8}
        return out

    assert _new_failures(_deviant(binary_mb)) == {"config-budget-megabytes": "KMR.compress.budget-units"}


def test_deepest_violation_first_is_caught() -> None:
    def deepest(inp: Mapping[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        if "extra = 1" in inp["toml"]:
            return {"error": "KMR.compress.policies", "message": "phases[0].policy.type: unknown"}
        return out

    assert _new_failures(_deviant(deepest)) == {"config-error-shallowest-first": "KMR.compress.config"}


def test_defaults_and_phase_names() -> None:
    def steps(inp: Mapping[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        if "config" in out and "max_steps" not in inp["toml"]:
            out["config"]["max_steps"] = 1000
        return out

    assert "config-minimal-defaults" in _new_failures(_deviant(steps))

    def names(inp: Mapping[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        if "config" in out:
            for p in out["config"]["phases"]:
                p["name"] = p["name"].split("-")[0] if p["name"].endswith(("-2", "-3")) else p["name"]
        return out

    assert _new_failures(_deviant(names)) == {"config-phase-names-repeat": "KMR.compress.phases",
                                              "config-default-knobs": "KMR.compress.policies"}


def test_nondeterministic_reader_is_caught() -> None:
    count = itertools.count()

    def flaky(inp: Mapping[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        if "config" in out and next(count) % 2:
            out["config"]["overwrite"] = not out["config"]["overwrite"]
        return out

    blame = _new_failures(_deviant(flaky))
    assert blame and set(blame.values()) == {"KMR.rule.deterministic"}
