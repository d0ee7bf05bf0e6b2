#!/usr/bin/env node
// A second, non-Python implementation of KMR, written from spec/ alone (no code shared with
// kmr_ref): Algorithms 1 and 10 on table worlds (spec/kmr.md §7, §9), magnitude pruning
// (spec/methods/pruning.md), Algorithm Q (spec/methods/quantization.md) and structured pruning of
// Linear / Conv1d chains with BatchNorm, Flatten and include / exclude patterns (spec/methods/structured.md),
// and low-rank factorization from given SVD factors (spec/methods/lowrank.md, kind lowrank-factors).
// It speaks the kit's subprocess protocol kmr-conform/1: JSON lines on stdin/stdout
// (spec/vectors/README.md): `kmr conform --exec "node conformance/impls/node/kmr.mjs"`.
// Exact numbers are BigInt rationals; binary32 arithmetic is Math.fround on every operation
// (one binary64 operation rounded to binary32 equals the binary32 operation for + - * /).

import { createInterface } from "node:readline";

const SPEC_VERSION = "0.1.0";

class KMRError extends Error {
  constructor(clause) { super(clause); this.clause = clause; }
}

// ---- exact rationals ---------------------------------------------------------------------------
const babs = (a) => (a < 0n ? -a : a);
function gcd(a, b) { a = babs(a); b = babs(b); while (b) { [a, b] = [b, a % b]; } return a; }
function frac(p, q = 1n) {
  if (q === 0n) throw new Error("zero denominator");
  if (q < 0n) { p = -p; q = -q; }
  const g = gcd(p, q) || 1n;
  return { p: p / g, q: q / g };
}
const cmp = (a, b) => { const d = a.p * b.q - b.p * a.q; return d < 0n ? -1 : d > 0n ? 1 : 0; };
const sub = (a, b) => frac(a.p * b.q - b.p * a.q, a.q * b.q);
const div = (a, b) => frac(a.p * b.q, a.q * b.p);
const canon = (a) => (a.q === 1n ? Number(a.p) : `${a.p}/${a.q}`);
const canonText = (a) => String(canon(a));
const floorFrac = (a) => { let r = a.p / a.q; if (a.p < 0n && r * a.q !== a.p) r -= 1n; return r; };

// a decimal literal ("0.29", "1e-7", "-12.5e3") as an exact rational
function decimal(text) {
  const m = /^(-?)(\d+)(?:\.(\d*))?(?:e([+-]?\d+))?$/i.exec(text);
  if (!m) throw new Error(`not a decimal: ${text}`);
  const digits = BigInt((m[2] || "0") + (m[3] || ""));
  let exp = BigInt(m[4] || "0") - BigInt((m[3] || "").length);
  let r = exp >= 0n ? frac(digits * 10n ** exp) : frac(digits, 10n ** -exp);
  return m[1] ? frac(-r.p, r.q) : r;
}

// KMR.exact.binary64: an integer, a "p/q" string, or a binary64 (its shortest decimal: String(x))
const RATIONAL = /^-?(0|[1-9][0-9]*)(\/[1-9][0-9]*)?$/;
function exact(x, err) {
  if (typeof x === "number") {
    if (!Number.isFinite(x)) throw new KMRError(err);
    return decimal(String(x));
  }
  if (typeof x === "string" && RATIONAL.test(x)) {
    const [p, q] = x.split("/");
    return frac(BigInt(p), BigInt(q || "1"));
  }
  throw new KMRError(err);
}

// the exact rational value of a binary64
function ofDouble(x) {
  if (x === 0) return frac(0n);
  const buf = new DataView(new ArrayBuffer(8));
  buf.setFloat64(0, x);
  const hi = buf.getUint32(0), lo = buf.getUint32(4);
  const sign = hi >>> 31 ? -1n : 1n;
  const e = (hi >>> 20) & 0x7ff;
  let mant = (BigInt(hi & 0xfffff) << 32n) | BigInt(lo);
  let exp;
  if (e === 0) { exp = -1074n; } else { mant |= 1n << 52n; exp = BigInt(e) - 1075n; }
  return exp >= 0n ? frac(sign * mant * 2n ** exp) : frac(sign * mant, 2n ** -exp);
}

// ---- binary32 bit patterns ---------------------------------------------------------------------
const dv = new DataView(new ArrayBuffer(4));
function f32(hex) { dv.setUint32(0, parseInt(hex, 16)); return dv.getFloat32(0); }
function hex32(x) { dv.setFloat32(0, x); return dv.getUint32(0).toString(16).padStart(8, "0"); }
const fr = Math.fround;

// ---- magnitude pruning -------------------------------------------------------------------------
function treeOrder(tree, prefix = "") {
  const out = [];
  for (const node of tree) {
    const path = prefix + node.name;
    if (node.children) out.push(...treeOrder(node.children, path + "."));
    else out.push(path + ".weight");
  }
  return out;
}

function prune(inp) {
  const given = inp.tensors.map((t) => t.name);
  // KMR.prune.tensor-order: depth-first over the module tree (default: the listed order)
  const order = inp.tree ? treeOrder(inp.tree) : given;
  const byName = new Map(inp.tensors.map((t) => [t.name, t]));
  const vals = order.map((n) => byName.get(n).values.map(f32));
  let groups;
  if (inp.knob === "sparsity") {
    groups = inp.scope === "global" ? [order.map((_, i) => i)] : order.map((_, i) => [i]);
  } else if (inp.knob.startsWith("sparsity@") && order.includes(inp.knob.slice(9))) {
    groups = [[order.indexOf(inp.knob.slice(9))]]; // KMR.prune.per-tensor-knob
  } else {
    throw new KMRError("KMR.knob.unknown");
  }
  if (typeof inp.sparsity === "boolean") throw new KMRError("KMR.knob.domain-real");
  const s = exact(inp.sparsity, "KMR.knob.domain-real");
  if (cmp(s, frac(0n)) < 0 || cmp(s, frac(1n)) > 0) throw new KMRError("KMR.knob.domain-real");
  for (const g of groups) {
    for (const i of g) {
      // KMR.prune.empty: a zero-size tensor is out of scope (nothing to check; n does not count it)
      if (vals[i].some((x) => !Number.isFinite(x))) throw new KMRError("KMR.prune.nonfinite");
    }
  }
  const out = order.map((n) => [...byName.get(n).values]);
  for (const g of groups) {
    const entries = [];
    for (const i of g) vals[i].forEach((x, j) => entries.push([Math.abs(x), i, j]));
    const k = Number(floorFrac(frac(s.p * BigInt(entries.length), s.q))); // KMR.prune.count, exact
    // KMR.prune.tie-break: (|w|, tensor index, flat index), |w| compared exactly
    entries.sort((a, b) => a[0] - b[0] || a[1] - b[1] || a[2] - b[2]);
    for (const [, i, j] of entries.slice(0, k)) out[i][j] = "00000000"; // KMR.prune.zero-value
  }
  const res = new Map(order.map((n, i) => [n, out[i]]));
  const cost = out.flat().filter((b) => f32(b) !== 0).length; // KMR.prune.cost-meter, -0.0 is zero
  return { tensors: given.map((n) => ({ name: n, values: res.get(n) })), cost };
}

// ---- Algorithm Q -------------------------------------------------------------------------------
function rne(x) { // round half to even
  const r = Math.floor(x), d = x - r;
  if (d > 0.5) return r + 1;
  if (d < 0.5) return r;
  return r % 2 === 0 ? r : r + 1;
}
const clamp = (v, lo, hi) => Math.min(Math.max(v, lo), hi);

function quantize(inp) {
  const b = inp.bits, sym = inp.scheme === "symmetric";
  if (typeof b !== "number" || !Number.isInteger(b) || b < 2 || b > 16) throw new KMRError("KMR.quant.bits");
  const [qmin, qmax] = sym ? [-(2 ** (b - 1) - 1), 2 ** (b - 1) - 1] : [0, 2 ** b - 1];
  const rows = inp.w.map((r) => r.map(f32));
  if (rows.length === 0 || rows.some((r) => r.length === 0)) throw new KMRError("KMR.quant.empty");
  if (rows.some((r) => r.some((x) => !Number.isFinite(x)))) throw new KMRError("KMR.quant.nonfinite");
  if (rows.some((r) => r.some((x) => Math.abs(x) > 2 ** 126))) throw new KMRError("KMR.quant.magnitude");
  const out = { codes: [], scale: [], zp: [], dequantized: [] };
  for (const r of rows) {
    const lo = Math.min(...r, 0), hi = Math.max(...r, 0); // line 1
    let s = sym ? fr(Math.max(-lo, hi) / qmax) : fr(fr(hi - lo) / qmax); // line 2
    s = Math.max(s, 2 ** -23); // line 3
    const inv = fr(1 / s); // line 4
    const zp = sym ? 0 : clamp(qmin - rne(fr(lo * inv)), qmin, qmax); // line 5
    const q = r.map((w) => clamp(rne(fr(w * inv)) + zp, qmin, qmax)); // line 6
    out.codes.push(q);
    out.scale.push(hex32(s));
    out.zp.push(zp);
    out.dequantized.push(q.map((c) => hex32(fr((c - zp) * s)))); // line 7
  }
  return out;
}

// ---- Algorithm 1 on a table world --------------------------------------------------------------
function checkValue(knobs, name, value) {
  const k = knobs.find((x) => x.name === name);
  if (!k || typeof value === "boolean") throw new KMRError("KnobDomainError");
  const v = exact(value, "KnobDomainError");
  const d = k.domain;
  let ok;
  if (d.type === "finite") ok = d.values.some((u) => cmp(exact(u, "KnobDomainError"), v) === 0);
  else if (d.type === "int") ok = v.q === 1n && v.p >= BigInt(d.lo) && v.p <= BigInt(d.hi);
  else ok = cmp(exact(d.lo, "KnobDomainError"), v) <= 0 && cmp(v, exact(d.hi, "KnobDomainError")) <= 0;
  if (!ok) throw new KMRError("KnobDomainError");
  return v;
}

function alg1(inp) {
  const cost = (st) => exact(inp.cost[String(st)], "MeterError");
  const quality = (st) => (inp.quality === null ? null : inp.quality[String(st)]);
  const rule = (st, knob, v) => {
    const next = (inp.transitions[String(st)] || {})[`${knob}=${canonText(v)}`];
    return next === undefined ? st : next;
  };
  const policy = (st, c, q, t) => {
    const pol = inp.policy;
    if (pol.type === "scheduled") return t < pol.schedule.length ? pol.schedule[t] : null;
    let best = null;
    for (const cand of pol.candidates) { // KMR.policy.greedy: score, then decrease, then earliest
      const v = checkValue(inp.knobs, cand.knob, cand.value);
      const s2 = rule(st, cand.knob, v), c2 = cost(s2);
      if (cmp(c2, c) >= 0) continue;
      const dc = sub(c, c2), q2 = quality(s2);
      const score = q === null || q2 === null ? frac(0n) : div(sub(ofDouble(q2), ofDouble(q)), dc);
      if (best === null || cmp(score, best.score) > 0 || (cmp(score, best.score) === 0 && cmp(dc, best.dc) > 0)) {
        best = { score, dc, cand };
      }
    }
    return best === null ? null : best.cand;
  };
  if (typeof inp.budget === "boolean") throw new KMRError("BudgetError");
  const B = exact(inp.budget, "BudgetError"); // line 0
  const N = inp.max_steps;
  if (typeof N !== "number" || !Number.isInteger(N) || N < 0) throw new KMRError("BudgetError");
  let st = inp.initial_state, c = cost(st), q = quality(st), t = 0, status = null; // line 1
  const trace = [];
  while (cmp(c, B) > 0) { // line 2
    if (t === N) { status = "step-limit"; break; } // line 3
    const p = policy(st, c, q, t); // line 4
    if (p === null) { status = "policy-stop"; break; } // line 5
    const v = checkValue(inp.knobs, p.knob, p.value); // line 6
    const s2 = rule(st, p.knob, v), c2 = cost(s2), q2 = quality(s2); // lines 7-8
    const rec = { t, knob: p.knob, value: canon(v), cost_before: canon(c), cost: canon(c2), quality: q2 };
    if (cmp(c2, c) < 0) { // line 9
      trace.push({ ...rec, accepted: true, reason: "accepted" });
      st = s2; c = c2; q = q2;
    } else {
      trace.push({ ...rec, accepted: false, reason: "not-strictly-lower" });
      status = "stalled";
      break;
    }
    t += 1;
  }
  if (cmp(c, B) <= 0) status = "feasible";
  return { status, final_state: st, final_cost: canon(c), final_quality: q, trace };
}

// ---- Algorithm 10: phases, each Algorithm 1 from the last accepted state (spec/kmr.md §9) -------
function alg10(inp) {
  if (typeof inp.budget === "boolean") throw new KMRError("BudgetError");
  const B = exact(inp.budget, "BudgetError");
  const N = inp.max_steps;
  if (typeof N !== "number" || !Number.isInteger(N) || N < 0) throw new KMRError("BudgetError");
  const cost = (st) => exact(inp.cost[String(st)], "MeterError");
  let st = inp.initial_state, used = 0, c = cost(st);
  let status = cmp(c, B) <= 0 ? "feasible" : "policy-stop";
  const trace = [], phases = [];
  for (const ph of inp.phases) {
    if (cmp(c, B) <= 0 || used === N) break; // KMR.alg10.skip
    const res = alg1({ knobs: ph.knobs, initial_state: st, transitions: ph.transitions, cost: inp.cost,
                       quality: inp.quality, policy: ph.policy, budget: inp.budget, max_steps: N - used });
    for (const r of res.trace) trace.push({ ...r, t: r.t + used, phase: ph.name });
    used += res.trace.filter((r) => r.accepted).length;
    phases.push({ name: ph.name, status: res.status, steps: res.trace.length });
    st = res.final_state; status = res.status; c = cost(st);
  }
  if (cmp(c, B) <= 0) status = "feasible";
  else if (used === N) status = "step-limit";
  return { status, final_state: st, final_cost: canon(c),
           final_quality: inp.quality === null ? null : inp.quality[String(st)], phases, trace };
}

// ---- structured pruning on Linear chains (spec/methods/structured.md) ---------------------------
// An exactly rounded binary64 sum (math.fsum): every addend is a binary64 m * 2^e with e >= BASE,
// summed exactly as a BigInt, then rounded once to nearest, ties to even.
const BASE = -1100;
function exactParts(x) { // x finite, >= 0: [mantissa, exponent]
  if (x === 0) return [0n, 0];
  const buf = new DataView(new ArrayBuffer(8));
  buf.setFloat64(0, x);
  const hi = buf.getUint32(0), lo = buf.getUint32(4);
  const e = (hi >>> 20) & 0x7ff;
  let mant = (BigInt(hi & 0xfffff) << 32n) | BigInt(lo);
  if (e === 0) return [mant, -1074];
  return [mant | (1n << 52n), e - 1075];
}
function fsum(xs) {
  let n = 0n;
  for (const x of xs) { const [m, e] = exactParts(x); n += m << BigInt(e - BASE); }
  if (n === 0n) return 0;
  const len = n.toString(2).length;
  let shift = Math.max(len - 53, 0), q = n >> BigInt(shift);
  if (shift > 0) {
    const rem = n - (q << BigInt(shift)), half = 1n << BigInt(shift - 1);
    if (rem > half || (rem === half && (q & 1n) === 1n)) q += 1n;
  }
  // q < 2^54, value = q * 2^(BASE + shift); scale in two exact steps (results here are normal)
  const e = BASE + shift;
  return Number(q) * 2 ** Math.max(e, -1000) * 2 ** (e - Math.max(e, -1000));
}

// fnmatch.fnmatchcase: * any run (dots included), ? one character, [seq] / [!seq] a set
function globMatch(name, pat) {
  let re = "";
  for (let i = 0; i < pat.length; i++) {
    const ch = pat[i];
    if (ch === "*") re += ".*";
    else if (ch === "?") re += ".";
    else if (ch === "[") {
      const j = pat.indexOf("]", i + 2);
      if (j < 0) { re += "\\["; continue; }
      let body = pat.slice(i + 1, j);
      if (body[0] === "!") body = "^" + body.slice(1);
      re += "[" + body.replace(/\\/g, "\\\\") + "]";
      i = j;
    } else re += ch.replace(/[.+^${}()|\\\]]/g, "\\$&");
  }
  return new RegExp("^" + re + "$", "s").test(name);
}

const kindOf = (l) => l.type || "Linear";

function structured(inp) {
  const layers = inp.layers, names = layers.map((l) => l.name);
  // KMR.structured.supported-graph / next-layer: checked first; anything else is unsupported
  if (layers.slice(0, -1).filter((l) => l.flatten).length > 1) throw new KMRError("KMR.structured.unsupported-graph");
  for (let i = 0; i + 1 < layers.length; i++) {
    const a = layers[i], b = layers[i + 1], cOut = a.weight.shape[0], cIn = b.weight.shape[1];
    let ok;
    if (a.flatten) ok = kindOf(a) === "Conv1d" && kindOf(b) === "Linear" && cOut > 0 && cIn % cOut === 0;
    else if (kindOf(a) === "Conv1d") ok = kindOf(b) === "Conv1d" && cIn === cOut;
    else ok = kindOf(b) === "Linear" && cIn === cOut;
    if (!ok) throw new KMRError("KMR.structured.unsupported-graph");
  }
  let prunable = names.slice(0, -1).map((_, i) => i); // KMR.structured.output-layer-kept
  const inc = inp.include === undefined ? null : inp.include, exc = inp.exclude === undefined ? [] : inp.exclude;
  if (inc !== null || exc.length) { // KMR.structured.select on the prunable layers' parameter names
    if (typeof inc === "string" || typeof exc === "string") throw new KMRError("KMR.select.include");
    const pn = (i) => [`${names[i]}.weight`, ...(layers[i].bias === null ? [] : [`${names[i]}.bias`])];
    const every = prunable.flatMap(pn);
    for (const pat of [...(inc || []), ...exc]) {
      if (!every.some((q) => globMatch(q, pat))) throw new KMRError("KMR.select.no-match");
    }
    prunable = prunable.filter((i) => (inc === null || pn(i).some((q) => inc.some((t) => globMatch(q, t))))
      && !pn(i).some((q) => exc.some((t) => globMatch(q, t))));
  }
  let targets;
  if (inp.knob === "fraction") targets = prunable;
  else if (inp.knob.startsWith("fraction@") && prunable.map((i) => names[i]).includes(inp.knob.slice(9))) {
    targets = [names.indexOf(inp.knob.slice(9))]; // KMR.structured.per-layer-knob
  } else throw new KMRError("KMR.knob.unknown");
  if (typeof inp.fraction === "boolean") throw new KMRError("KMR.knob.domain-real");
  const f = exact(inp.fraction, "KMR.knob.domain-real"); // KMR.structured.knob: f in [0, 1)
  if (cmp(f, frac(0n)) < 0 || cmp(f, frac(1n)) >= 0) throw new KMRError("KMR.knob.domain-real");
  if (inp.p !== 1 && inp.p !== 2) throw new KMRError("KMR.knob.domain");
  for (const l of layers) { // KMR.structured.empty, KMR.structured.nonfinite: parameters of layers and BatchNorms
    const params = [l.weight.values, ...(l.bias === null ? [] : [l.bias]), ...(l.bn ? [l.bn.weight, l.bn.bias] : [])];
    if (params.some((a) => a.length === 0)) throw new KMRError("KMR.structured.empty");
    if (params.some((a) => a.some((b) => !Number.isFinite(f32(b))))) throw new KMRError("KMR.structured.nonfinite");
  }
  const rows = layers.map((l) => {
    const out = l.weight.shape[0], fan = l.weight.shape.slice(1).reduce((a, b) => a * b, 1);
    const v = l.weight.values.map(f32);
    return Array.from({ length: out }, (_, c) => v.slice(c * fan, (c + 1) * fan));
  });
  // KMR.structured.score: fsum of |w|^p, each term one binary64 operation (exact for binary32)
  const score = (row) => fsum(row.map((w) => (inp.p === 1 ? Math.abs(w) : Math.abs(w) * Math.abs(w))));
  const removed = layers.map(() => new Set());
  if (inp.knob === "fraction" && inp.scope === "global") { // KMR.structured.global-order
    const total = targets.reduce((a, i) => a + rows[i].length, 0);
    const K = Number(floorFrac(frac(f.p * BigInt(total), f.q)));
    const order = [];
    for (const i of targets) rows[i].forEach((r, c) => order.push([div(ofDouble(score(r)), frac(BigInt(r.length))), i, c]));
    order.sort((a, b) => cmp(a[0], b[0]) || a[1] - b[1] || a[2] - b[2]);
    let n = 0;
    for (const [, i, c] of order) {
      if (n >= K) break;
      if (rows[i].length - removed[i].size > 1) { removed[i].add(c); n += 1; }
    }
  } else {
    for (const i of targets) { // KMR.structured.count and KMR.structured.tie-break
      const C = rows[i].length;
      const k = Math.min(Number(floorFrac(frac(f.p * BigInt(C), f.q))), C - 1);
      const ranked = rows[i].map((r, c) => [score(r), c]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      for (const [, c] of ranked.slice(0, k)) removed[i].add(c);
    }
  }
  let params = 0;
  const out = layers.map((l, i) => {
    const [o, inn, ...kern] = l.weight.shape;
    const kk = kern.reduce((a, b) => a * b, 1); // kernel entries per input channel (1 for a Linear)
    // KMR.structured.flatten: after a Flatten, input j belongs to channel floor(j / s) of the layer before
    const s = i > 0 && layers[i - 1].flatten ? inn / layers[i - 1].weight.shape[0] : 1;
    const keepOut = [...Array(o).keys()].filter((c) => !removed[i].has(c)); // KMR.structured.removal
    const keepIn = [...Array(inn).keys()].filter((j) => i === 0 || !removed[i - 1].has(Math.floor(j / s))); // next-layer-inputs
    const values = keepOut.flatMap((c) => keepIn.flatMap((j) => [...Array(kk).keys()].map((t) => l.weight.values[(c * inn + j) * kk + t])));
    const bias = l.bias === null ? null : keepOut.map((c) => l.bias[c]);
    let bn = null;
    if (l.bn !== null) { // KMR.structured.bn
      bn = {};
      for (const k of Object.keys(l.bn)) bn[k] = keepOut.map((c) => l.bn[k][c]);
    }
    params += values.length + (bias ? bias.length : 0) + (bn ? bn.weight.length + bn.bias.length : 0); // KMR.meter.params
    const res = { ...l, weight: { shape: [keepOut.length, keepIn.length, ...kern], values }, bias, bn };
    return res;
  });
  return { layers: out, params };
}

// ---- low-rank factorization with the SVD backend's factors given (spec/methods/lowrank.md) ------
// kind lowrank-factors: the vector gives, per layer, the factors an SVD returned for its binary64
// matrix; everything after them is exact IEEE arithmetic (Math.sqrt and * are correctly rounded).
const dv8 = new DataView(new ArrayBuffer(8));
function f64(hex) { dv8.setUint32(0, parseInt(hex.slice(0, 8), 16)); dv8.setUint32(4, parseInt(hex.slice(8), 16)); return dv8.getFloat64(0); }
function hex64(x) {
  dv8.setFloat64(0, x);
  return dv8.getUint32(0).toString(16).padStart(8, "0") + dv8.getUint32(4).toString(16).padStart(8, "0");
}
const FLOATS = ["float32", "float64"];
const decodeT = (dtype, vals) => (dtype === "float32" ? vals.map(f32) : dtype === "float64" ? vals.map(f64) : vals.map(Number));
const encodeT = (dtype, xs) => (dtype === "float32" ? xs.map(hex32) : xs.map(hex64)); // hex32 rounds to nearest even
const prod = (xs) => xs.reduce((a, b) => a * b, 1);

function lrShape(l) { // KMR.lowrank.conv / refactor: [m, n] of the layer's matrix
  if (l.type === "LowRankFactors") return [l.second.weight.shape[0], l.first.weight.shape[1]];
  return [l.weight.shape[0], prod(l.weight.shape.slice(1))];
}
function lrParams(l) { // [name suffix, dtype, values]
  if (l.type === "LowRankFactors") {
    return [...lrParams(l.first).map(([n, d, v]) => ["0." + n, d, v]), ...lrParams(l.second).map(([n, d, v]) => ["1." + n, d, v])];
  }
  return [["weight", l.weight.dtype, l.weight.values], ...(l.bias === null ? [] : [["bias", l.weight.dtype, l.bias]])];
}
const lrNumel = (l) => lrParams(l).reduce((a, [, , v]) => a + v.length, 0);
const strip = (l) => { const o = { ...l }; delete o.svd; return o; };

function energyRank(s, e) { // KMR.lowrank.energy: smallest r with fsum(e_1..e_r) >= e * fsum(all), exactly
  const sq = s.map((x) => x * x);
  const total = sq.every(Number.isFinite) ? fsum(sq) : Infinity;
  if (!Number.isFinite(total)) throw new KMRError("KMR.lowrank.nonfinite"); // the energy overflows
  const bound = frac(e.p * ofDouble(total).p, e.q * ofDouble(total).q);
  for (let r = 1; r <= sq.length; r++) if (cmp(ofDouble(fsum(sq.slice(0, r))), bound) >= 0) return r;
  return sq.length;
}

function factorLayer(l, r) { // KMR.lowrank.sign, KMR.lowrank.split, KMR.lowrank.conv
  const base = l.type === "LowRankFactors" ? l.first : l, last = l.type === "LowRankFactors" ? l.second : l;
  const [m, n] = lrShape(l), k = Math.min(m, n);
  const uf = l.svd.u.map(f64), s = l.svd.s.map(f64), vf = l.svd.vh.map(f64);
  const u = Array.from({ length: m }, (_, i) => uf.slice(i * k, (i + 1) * k));
  const vh = Array.from({ length: k }, (_, i) => vf.slice(i * n, (i + 1) * n));
  for (let c = 0; c < k; c++) { // negate (u_c, v_c) when u_c's largest |entry| (first on ties) is negative
    let piv = 0;
    for (let i = 1; i < m; i++) if (Math.abs(u[i][c]) > Math.abs(u[piv][c])) piv = i;
    if (u[piv][c] < 0) { for (let i = 0; i < m; i++) u[i][c] *= -1; vh[c] = vh[c].map((x) => x * -1); }
  }
  const root = s.slice(0, r).map(Math.sqrt);
  const a = [], b = [];
  for (let i = 0; i < r; i++) for (let j = 0; j < n; j++) a.push(root[i] * vh[i][j]);
  for (let i = 0; i < m; i++) for (let j = 0; j < r; j++) b.push(u[i][j] * root[j]);
  const dtype = base.weight.dtype;
  const first = { type: base.type, weight: { shape: [r, ...base.weight.shape.slice(1)], dtype, values: encodeT(dtype, a) }, bias: null };
  const ones = base.weight.shape.slice(2).map(() => 1);
  const second = { type: base.type, weight: { shape: [m, r, ...ones], dtype, values: encodeT(dtype, b) }, bias: last.bias };
  if (base.type === "Conv1d") {
    first.conv = base.conv;
    second.conv = { stride: ones, padding: ones.map(() => 0), dilation: ones };
  }
  return { name: l.name, type: "LowRankFactors", first, second };
}

function lowrankFactors(inp) {
  const layers = inp.layers, byName = new Map(layers.map((l) => [l.name, l]));
  const inScope = (l) => lrParams(l).every(([, , v]) => v.length > 0); // KMR.lowrank.empty
  let ruleNames;
  if (inp.rule_layers !== undefined) { // KMR.lowrank.scope: the configured names must be layers
    for (const nm of inp.rule_layers) if (!byName.has(nm)) throw new KMRError("KMR.lowrank.scope");
    ruleNames = [...inp.rule_layers];
  } else ruleNames = layers.filter(inScope).map((l) => l.name);
  const inc = inp.include === undefined ? null : inp.include, exc = inp.exclude === undefined ? [] : inp.exclude;
  if (inc !== null || exc.length) { // KMR.select.*: patterns on the layers' parameter names
    if (typeof inc === "string" || typeof exc === "string") throw new KMRError("KMR.select.include");
    const pn = (nm) => lrParams(byName.get(nm)).map(([q]) => `${nm}.${q}`);
    const every = ruleNames.flatMap(pn);
    for (const pat of [...(inc || []), ...exc]) if (!every.some((q) => globMatch(q, pat))) throw new KMRError("KMR.select.no-match");
    ruleNames = ruleNames.filter((nm) => (inc === null || pn(nm).some((q) => inc.some((t) => globMatch(q, t))))
      && !pn(nm).some((q) => exc.some((t) => globMatch(q, t))));
  }
  const [kind, target] = inp.knob.includes("@") ? [inp.knob.slice(0, inp.knob.indexOf("@")), inp.knob.slice(inp.knob.indexOf("@") + 1)] : [inp.knob, ""];
  const known = (kind === "rank" || kind === "energy") && (target === "" || ruleNames.includes(target));
  if (!known) throw new KMRError("KMR.knob.unknown");
  let v;
  if (kind === "rank") { // KMR.lowrank.rank-range
    if (typeof inp.value !== "number" || !Number.isInteger(inp.value) || inp.value < 1 || inp.value > 2 ** 20) throw new KMRError("KMR.lowrank.rank-range");
    v = inp.value;
  } else {
    if (typeof inp.value === "boolean") throw new KMRError("KMR.knob.domain-real");
    v = exact(inp.value, "KMR.knob.domain-real");
    if (cmp(v, frac(0n)) <= 0 || cmp(v, frac(1n)) > 0) throw new KMRError("KMR.knob.domain-real");
  }
  let scope = ruleNames.map((nm) => byName.get(nm)).filter(inScope);
  if (target) scope = scope.filter((l) => l.name === target); // KMR.lowrank.per-layer-knob
  for (const l of scope) for (const [, d, vals] of lrParams(l)) { // KMR.lowrank.dtype, KMR.lowrank.nonfinite
    if (!FLOATS.includes(d)) throw new KMRError("KMR.lowrank.dtype");
    if (decodeT(d, vals).some((x) => !Number.isFinite(x))) throw new KMRError("KMR.lowrank.nonfinite");
  }
  const plan = new Map();
  for (const l of scope) {
    const [m, n] = lrShape(l);
    let r;
    if (kind === "rank") {
      r = v;
      if (target && r >= Math.min(m, n)) throw new KMRError("KMR.lowrank.rank-range");
    } else r = energyRank(l.svd.s.map(f64), v);
    if (l.type === "LowRankFactors" && r >= l.first.weight.shape[0]) continue; // KMR.lowrank.refactor
    if (!(r * (m + n) < m * n)) continue; // KMR.lowrank.applicable
    plan.set(l.name, r);
  }
  const out = layers.map((l) => (plan.has(l.name) ? factorLayer(l, plan.get(l.name)) : strip(l)));
  return { layers: out, params: out.reduce((a, l) => a + lrNumel(l), 0) }; // KMR.meter.params
}

// ---- the protocol ------------------------------------------------------------------------------
const KINDS = { "alg1": alg1, "alg10": alg10, "prune-magnitude": prune, "quant-uniform": quantize,
                "prune-structured": structured, "lowrank-factors": lowrankFactors };
const send = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on("line", (line) => {
  if (!line.trim()) return;
  const msg = JSON.parse(line);
  if (msg.op === "hello") {
    send({ op: "hello", protocol: "kmr-conform/1", name: "kmr-node", spec_version: SPEC_VERSION,
           kinds: Object.keys(KINDS), unsupported_features: [] });
  } else if (msg.op === "run") {
    const fn = KINDS[msg.kind];
    if (!fn) { send({ op: "result", id: msg.id, not_supported: `kind ${msg.kind}` }); return; }
    let output;
    try {
      output = fn(msg.input);
    } catch (e) {
      if (!(e instanceof KMRError)) throw e;
      output = { error: e.clause };
    }
    send({ op: "result", id: msg.id, output });
  } else if (msg.op === "bye") {
    rl.close();
  }
});
