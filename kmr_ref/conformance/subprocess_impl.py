"""The language-neutral protocol: an implementation as a subprocess speaking JSON lines.

``kmr conform --exec "CMD"`` starts CMD once and talks to it over stdin / stdout, one JSON object
per line (UTF-8), protocol ``kmr-conform/1`` (``spec/vectors/README.md``, "Subprocess protocol"):

1. handshake: the kit sends ``{"op": "hello", "protocol": "kmr-conform/1", "spec_version"}``; the
   implementation answers ``{"op": "hello", "protocol": "kmr-conform/1", "name", "spec_version",
   "kinds": [...], "unsupported_features": [...]}``. Kinds it does not list report ``not-supported``.
2. per vector (twice, ``KMR.rule.deterministic``): ``{"op": "run", "id", "kind", "input"}`` with the
   vector's ``input`` exactly as in the file (bit patterns, ``"p/q"`` strings); the answer is
   ``{"op": "result", "id", "output": <shaped like expected>}`` (an error as ``{"error": "<clause>"}``),
   or ``{"op": "result", "id", "not_supported": "<why>"}`` / ``{"op": "result", "id", "skip": "<why>"}``.
3. ``{"op": "bye"}``, then stdin is closed; the program exits.

Anything else on stdout, a crash or a timeout is a failure of the vector being run (with the tail
of the program's stderr). ``KMR.rule.no-mutation`` cannot be observed through a pipe.
"""

from __future__ import annotations

import json
import select
import shlex
import subprocess
import tempfile
from collections.abc import Mapping
from typing import IO, Any

from kmr_ref import SPEC_VERSION
from kmr_ref.conformance.adapters import NotSupported, SkipVector
from kmr_ref.conformance.vectors import VectorRunner, compare_kind

Json = Any
PROTOCOL = "kmr-conform/1"


class ProtocolError(Exception):
    """The program broke the protocol (bad handshake, bad line, exit, timeout)."""


class SubprocessImpl:
    """One running implementation; :meth:`runners` gives a runner per kind it declared."""

    def __init__(self, cmd: str, timeout: float = 60.0) -> None:
        self.cmd = cmd
        self.timeout = timeout
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(shlex.split(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr)
        self._send({"op": "hello", "protocol": PROTOCOL, "spec_version": SPEC_VERSION})
        hello = self._recv()
        if hello.get("op") != "hello" or hello.get("protocol") != PROTOCOL:
            raise ProtocolError(f"expected a {PROTOCOL} hello, got {json.dumps(hello)[:200]}")
        if hello.get("spec_version") != SPEC_VERSION:
            raise ProtocolError(f"the program implements spec {hello.get('spec_version')!r}, "
                                f"the vectors are {SPEC_VERSION}")
        self.name = str(hello.get("name", cmd))
        self.kinds = [str(k) for k in hello.get("kinds", [])]
        self.unsupported_features = [str(f) for f in hello.get("unsupported_features", [])]
        self.dead = ""

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        data = self._stderr.read().decode("utf-8", "replace")
        return data[-2000:]

    def _send(self, obj: Json) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(obj, sort_keys=True) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise ProtocolError(f"the program closed its stdin ({e}); stderr: {self._stderr_tail()}") from e

    def _recv(self) -> Json:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], self.timeout)
        if not ready:
            raise ProtocolError(f"no answer within {self.timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait(timeout=5)
            raise ProtocolError(f"the program exited (status {rc}); stderr: {self._stderr_tail()}")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ProtocolError(f"not a JSON line: {line[:200]!r}") from e
        if not isinstance(obj, dict):
            raise ProtocolError(f"not a JSON object: {line[:200]!r}")
        return obj

    def call(self, vid: str, kind: str, inp: Json) -> Json:
        """One run request; returns the result object (``output`` / ``not_supported`` / ``skip``)."""
        if self.dead:
            raise ProtocolError(self.dead)
        try:
            self._send({"op": "run", "id": vid, "kind": kind, "input": inp})
            res = self._recv()
        except ProtocolError as e:
            self.dead = f"the implementation is gone: {e}"
            raise
        if res.get("op") != "result" or res.get("id") != vid:
            raise ProtocolError(f"expected the result of {vid!r}, got {json.dumps(res)[:300]}")
        return res

    def runner(self, kind: str) -> VectorRunner:
        def run(vec: Mapping[str, Json]) -> tuple[bool, str]:
            outs = []
            for _ in range(2):
                try:
                    res = self.call(vec["id"], kind, vec["input"])
                except ProtocolError as e:
                    return False, f"protocol: {e}"
                if "not_supported" in res:
                    raise NotSupported(str(res["not_supported"]))
                if "skip" in res:
                    if "error" not in vec["expected"]:
                        return False, f"skip on a non-error vector ({res['skip']}); declare a feature instead"
                    raise SkipVector(str(res["skip"]))
                if "output" not in res:
                    return False, f"protocol: a result needs output, not_supported or skip: {json.dumps(res)[:300]}"
                outs.append(res["output"])
            diffs = [] if outs[0] == outs[1] else [
                "KMR.rule.deterministic: a second run on the same input gave a different result"]
            rest = compare_kind(kind, vec["expected"], outs[0], vec.get("tolerance"))
            if rest and kind in ("lowrank-factors", "lowrank-svd"):  # pin the failure as in-process
                from kmr_ref.conformance.lowrank_diagnose import diagnose

                tol = vec.get("tolerance") if kind == "lowrank-svd" else None
                diffs += diagnose(vec["input"], vec["expected"], outs[0], tol)
            diffs += rest
            return not diffs, "\n".join(diffs)

        return run

    def runners(self) -> dict[str, VectorRunner]:
        return {k: self.runner(k) for k in self.kinds}

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send({"op": "bye"})
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (ProtocolError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()

