"""Reads ``spec/``: clause IDs, algorithm boxes, and which reference lines cite which IDs.

Used by ``kmr spec --annotate`` and by the traceability test, so both read the same IDs.
"""

from __future__ import annotations

import re
from pathlib import Path

PKG = Path(__file__).resolve().parent
CLAUSE_DEF = re.compile(r"^\s*-\s*`(KMR\.[A-Za-z0-9_.-]+)`")
LINE_ID = re.compile(r"(KMR\.alg\d+\.[A-Za-z0-9_-]+)\s*$")
CITED = re.compile(r"KMR\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+")


def spec_root() -> Path:
    """The spec folder: ``<repo>/spec`` in a checkout, ``kmr_ref/_spec`` in an installed wheel."""
    for cand in (PKG.parent / "spec", PKG / "_spec"):
        if (cand / "kmr.md").is_file():
            return cand
    raise FileNotFoundError("spec/ not found next to kmr_ref nor packaged as kmr_ref/_spec")


def spec_files() -> list[Path]:
    return sorted(p for p in spec_root().rglob("*.md") if "vectors" not in p.parts)


def defined_clauses() -> dict[str, Path]:
    """Clause IDs defined in spec: a bullet that starts with the ID, or a line ID of an algorithm box."""
    out: dict[str, Path] = {}
    for f in spec_files():
        for line in f.read_text(encoding="utf-8").splitlines():
            m = CLAUSE_DEF.match(line) or LINE_ID.search(line)
            if m:
                out.setdefault(m.group(1), f)
    return out


def property_clauses() -> set[str]:
    """Clauses marked ``(property)``: consequences checked by tests and proofs, not code lines."""
    out: set[str] = set()
    for f in spec_files():
        for line in f.read_text(encoding="utf-8").splitlines():
            m = re.match(r"^\s*-\s*`(KMR\.[A-Za-z0-9_.-]+)`\s*\[[^\]]*\]\s*\(property\)", line)
            if m:
                out.add(m.group(1))
    return out


def algorithm_box(tag: str) -> list[str]:
    """The fenced box whose first line is ``Algorithm <n> ...`` for tag ``alg<n>``."""
    m = re.fullmatch(r"alg(\d+)", tag)
    if not m:
        raise ValueError(f"algorithm tag must look like 'alg1', got {tag!r}")
    head = f"Algorithm {m.group(1)} "
    for f in spec_files():
        blocks: list[str] = re.findall(r"```\n(.*?)```", f.read_text(encoding="utf-8"), flags=re.S)
        for b in blocks:
            if b.startswith(head):
                return b.rstrip("\n").splitlines()
    raise ValueError(f"no box 'Algorithm {m.group(1)}' in {spec_root()}")


def line_id_of(line: str) -> str | None:
    m = LINE_ID.search(line)
    return m.group(1) if m else None


def implementing_lines(root: Path = PKG) -> dict[str, list[tuple[str, int, str]]]:
    """For every ``KMR.algN.*`` ID cited in a ``#`` comment of the reference code: (file, line, source)."""
    out: dict[str, list[tuple[str, int, str]]] = {}
    for f in sorted(root.rglob("*.py")):
        if "_spec" in f.relative_to(root).parts:  # the packaged spec's vector generators are not the reference
            continue
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1):
            if "#" not in line:
                continue
            for cid in re.findall(r"KMR\.alg\d+\.[A-Za-z0-9_-]+", line.split("#", 1)[1]):
                out.setdefault(cid, []).append((str(f.relative_to(root.parent)), i, line))
    return out
