"""Channel groups of a traced graph for structured pruning (spec/methods/structured.md, "Graphs").

The model is traced with ``torch.fx`` (eval mode). Every tensor of the trace gets a *label*: which
channel dimension it carries and which *atoms* (runs of channels created by one Conv/Linear) sit
on it, or ``None`` when its channels can never change (*fixed*). Residual adds, channel-wise
multiplications (squeeze-and-excite gates) and concatenations relate atoms; a union-find over the
atoms gives the *groups*: sets of channels that are removed together. Whatever the rules do not
cover is refused, naming the fx node, before anything is changed (``KMR.structured.graph-refuse``).
"""

from __future__ import annotations

import inspect
import itertools
import math
import operator
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from kmr_ref.core.errors import RuleInputError
from kmr_ref.methods.modules import clone_tree, set_parameter

CLAUSE = "KMR.structured"
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
Layer = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d

# KMR.structured.graph-elementwise: exact module types that act on each entry alone
_ELEMENTWISE_MODULES = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
_ELEMENTWISE_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    torch.relu, F.relu, F.relu6, F.hardtanh, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.silu, F.gelu,
    F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu, F.selu, F.celu, F.mish, F.softplus, F.softsign,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, torch.neg, operator.neg, torch.exp,
    torch.abs, operator.abs,
)
_ELEMENTWISE_METHODS = ("relu", "sigmoid", "tanh", "neg", "exp", "abs", "contiguous", "clone")
_BINARY_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div,
)
_BINARY_METHODS = ("add", "sub", "mul", "div")
# KMR.structured.graph-spatial: per-channel pooling and padding of the spatial dims
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_PAD_MODULES = (
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
    nn.ReplicationPad3d,
)
_POOL_FUNCTIONS: dict[Callable[..., Any], int] = {
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3,
    F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3,
    F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3, F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3,
}
_CONV_FUNCTIONS: dict[Callable[..., Any], int] = {torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}


def _refuse(node: fx.Node | None, msg: str, clause: str = f"{CLAUSE}.graph-refuse") -> RuleInputError:
    where = "" if node is None else f"fx node {node.name!r} ({node.op} {_target_name(node)}): "
    return RuleInputError(clause, where + msg)


def _target_name(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return t
    return getattr(t, "__qualname__", None) or getattr(t, "__name__", None) or repr(t)


# ---------------------------------------------------------------------------------------------
# Tracing (KMR.structured.graph-trace)


class _CustomFunction:
    """The call target recorded for a custom ``torch.autograd.Function`` (refused by the rules)."""

    def __init__(self, cls: type[torch.autograd.Function]) -> None:
        self.cls = cls
        self.__name__ = f"{cls.__name__}.apply"
        self.__qualname__ = f"{cls.__qualname__}.apply (custom autograd Function)"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.cls.apply(*args, **kwargs)  # type: ignore[no-untyped-call]


_TRACE_LOCK = threading.Lock()


def _has_proxy(xs: Any) -> fx.Proxy | None:
    for x in _flat(xs):
        if isinstance(x, fx.Proxy):
            return x
    return None


def _flat(xs: Any) -> Iterator[Any]:
    if isinstance(xs, (tuple, list)):
        for x in xs:
            yield from _flat(x)
    elif isinstance(xs, dict):
        for x in xs.values():
            yield from _flat(x)
    else:
        yield xs


def trace(model: nn.Module) -> fx.Graph:
    """``KMR.structured.graph-trace``: the ``torch.fx`` graph of ``model`` traced in eval mode
    (a copy of the module flags; torch.nn modules other than containers are leaves); a custom
    ``torch.autograd.Function`` is recorded as one call node (``KMR.structured.graph-refuse``)."""
    m = clone_tree(model).eval()
    fn_cls = torch.autograd.function.Function
    original = fn_cls.__dict__["apply"]

    def apply(cls: type, *args: Any, **kwargs: Any) -> Any:
        p = _has_proxy((args, kwargs))
        if p is not None:
            return p.tracer.create_proxy("call_function", _CustomFunction(cls), args, kwargs)
        return original.__func__(cls, *args, **kwargs)

    with _TRACE_LOCK:
        fn_cls.apply = classmethod(apply)  # type: ignore[assignment,method-assign]
        try:
            return fx.Tracer().trace(m)
        except RuleInputError:
            raise
        except Exception as e:  # KMR.structured.graph-trace: data-dependent control flow, untraceable code
            raise RuleInputError(f"{CLAUSE}.graph-trace", f"torch.fx cannot trace the model: "
                                                          f"{type(e).__name__}: {e}") from None
        finally:
            fn_cls.apply = original  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------
# Labels


@dataclass(frozen=True)
class Lab:
    """The prunable channel dimension of a tensor: ``kind`` ``conv`` (dim 1 of an ``nd``-dim
    tensor), ``feat`` (the last dim) or ``flat`` (dim 1 of a flattened conv tensor, each channel a
    block of unknown size); ``atoms`` in channel order."""

    kind: str
    atoms: tuple[int, ...]
    nd: int = 0


@dataclass(frozen=True)
class Dep:
    """``KMR.structured.graph-fixed``: the result of an operation the rules do not cover; its
    channels are fixed provided ``atoms`` (the prunable channels it read) are pinned."""

    atoms: tuple[int, ...]


@dataclass(frozen=True)
class _Param:
    module: str
    leaf: str


@dataclass(frozen=True)
class _Int:
    batch: bool  # the size of dim 0 (KMR.structured.graph-flatten)


@dataclass(frozen=True)
class _Shape:
    lab: Lab | None


class _Other:
    """A non-tensor value that carries no channels (a tuple of fixed tensors, a dtype, ...)."""


OTHER = _Other()


@dataclass
class Member:
    """A module whose dim-0 rows (Conv/Linear, depthwise Conv) or entries (BatchNorm) follow atoms."""

    name: str
    module: nn.Module
    role: str  # "layer" | "depthwise" | "bn"
    atoms: tuple[int, ...]


@dataclass
class Consumer:
    """A Conv/Linear whose input columns follow atoms; each channel owns ``block`` columns."""

    name: str
    module: Layer
    atoms: tuple[int, ...]
    block: int


@dataclass
class Group:
    """``KMR.structured.graph-group``: channels removed together. ``name``: the module that
    created the group's first atom; ``rows``: (module, weight, offset) whose rows c + offset are
    the group's channel c (the scored members); ``pinned``: never pruned."""

    index: int
    name: str
    size: int
    rows: list[tuple[str, Layer, int]] = field(default_factory=list)
    pinned: bool = False


@dataclass
class GraphAnalysis:
    groups: list[Group]
    members: list[Member]
    consumers: list[Consumer]
    group_of: dict[int, int]  # atom -> group index
    atom_size: list[int]

    def modules(self) -> list[tuple[str, nn.Module]]:
        """Every Conv/Linear/BatchNorm the analysis relates to a group, in first-seen order."""
        seen: dict[str, nn.Module] = {}
        for m in self.members:
            seen.setdefault(m.name, m.module)
        for c in self.consumers:
            seen.setdefault(c.name, c.module)
        return list(seen.items())


class _UF:
    """Union-find over atoms; an atom may be split in two (``KMR.structured.graph-add``), and is
    then replaced everywhere by its two halves (its *leaves*)."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.pinned: list[bool] = []
        self.creator: list[str] = []
        self.lo: list[int] = []  # first channel of the atom in its creator's output
        self.full: list[int] = []  # the creator's output channels
        self.children: dict[int, tuple[int, int]] = {}

    def new(self, size: int, creator: str, lo: int = 0, full: int | None = None) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.pinned.append(False)
        self.creator.append(creator)
        self.lo.append(lo)
        self.full.append(size if full is None else full)
        return len(self.parent) - 1

    def leaves(self, atoms: Sequence[int]) -> list[int]:
        out: list[int] = []
        for a in atoms:
            if a in self.children:
                out.extend(self.leaves(self.children[a]))
            else:
                out.append(a)
        return out

    def split(self, a: int, k: int) -> None:
        """Split leaf ``a`` and every leaf of its class after their first ``k`` channels."""
        root = self.find(a)
        cls = [b for b in range(len(self.parent)) if b not in self.children and self.find(b) == root]
        halves = []
        for b in cls:
            b1 = self.new(k, self.creator[b], self.lo[b], self.full[b])
            b2 = self.new(self.size[b] - k, self.creator[b], self.lo[b] + k, self.full[b])
            self.pinned[b1] = self.pinned[b2] = self.pinned[root]
            self.children[b] = (b1, b2)
            halves.append((b1, b2))
        for b1, b2 in halves[1:]:
            self.union(halves[0][0], b1)
            self.union(halves[0][1], b2)

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)  # the root is the earliest atom
            self.parent[hi] = lo
            self.pinned[lo] = self.pinned[lo] or self.pinned[hi]


def _refine(uf: _UF, x: Sequence[int], y: Sequence[int]) -> tuple[list[int], list[int]]:
    """Split leaves of ``x`` and ``y`` (same total size) until both have the same boundaries."""
    while True:
        xl, yl = uf.leaves(x), uf.leaves(y)
        sx, sy = [uf.size[a] for a in xl], [uf.size[a] for a in yl]
        if sx == sy:
            return xl, yl
        cuts = set(itertools.accumulate(sx)) | set(itertools.accumulate(sy))
        for leaves in (xl, yl):
            off = 0
            done = False
            for a in leaves:
                inner = sorted(c for c in cuts if off < c < off + uf.size[a])
                if inner:
                    uf.split(a, inner[0] - off)
                    done = True
                    break
                off += uf.size[a]
            if done:
                break


def _total(uf: _UF, atoms: Sequence[int]) -> int:
    return sum(uf.size[a] for a in atoms)


# ---------------------------------------------------------------------------------------------
# The analysis


def analyse_graph(model: nn.Module) -> GraphAnalysis:
    """``KMR.structured.graph-group``: the channel groups of ``model``, or RuleInputError
    (``KMR.structured.graph-refuse`` / ``graph-trace`` / ``graph-shared``) naming what is not covered."""
    graph = trace(model)
    mods = dict(model.named_modules(remove_duplicate=False))
    _check_shared(model)
    return _Analyser(model, mods).run(graph)


def _check_shared(model: nn.Module) -> None:
    """``KMR.structured.graph-shared``: no parameter held by two modules."""
    owner: dict[int, str] = {}
    for q, m in model.named_modules(remove_duplicate=False):
        for pn, p in m._parameters.items():
            if p is None:
                continue
            if id(p) in owner and owner[id(p)] != q:
                raise RuleInputError(f"{CLAUSE}.graph-shared", f"parameter {q}.{pn} is also held by {owner[id(p)]!r}")
            owner[id(p)] = q


def _is_layer(m: nn.Module) -> bool:
    return type(m) in (nn.Linear, *_CONV) or isinstance(m, (nn.Linear, *_CONV))


class _Analyser:
    def __init__(self, model: nn.Module, mods: dict[str, nn.Module]) -> None:
        self.model = model
        self.mods = mods
        self.uf = _UF()
        self.env: dict[fx.Node, Any] = {}
        self.members: list[Member] = []
        self.consumers: list[Consumer] = []
        self.opaque: list[tuple[fx.Node, tuple[int, ...]]] = []
        self.used: dict[str, fx.Node] = {}

    # -- helpers -------------------------------------------------------------------------------

    def val(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self.env[a]
        if isinstance(a, (tuple, list)):
            return type(a)(self.val(x) for x in a)
        return a  # a literal: number, None, string, slice, dtype

    def labs(self, xs: Any) -> list[Lab]:
        return [v for v in _flat(self.val(xs)) if isinstance(v, Lab)]

    def deps(self, xs: Any) -> tuple[int, ...]:
        """Every atom a value read (a label's atoms, a Dep's atoms)."""
        out: list[int] = []
        for v in _flat(self.val(xs)):
            if isinstance(v, (Lab, Dep)):
                out.extend(v.atoms)
        return tuple(dict.fromkeys(out))

    def fixed(self, atoms: Sequence[int]) -> Dep | None:
        return Dep(tuple(atoms)) if atoms else None

    def pin(self, lab: Lab) -> None:
        for a in self.uf.leaves(lab.atoms):
            self.uf.pinned[self.uf.find(a)] = True

    def use_module(self, node: fx.Node, name: str) -> None:
        """``KMR.structured.graph-refuse``: a module with parameters is called at most once."""
        if name in self.used:
            raise _refuse(node, f"module {name!r} is called more than once (also at {self.used[name].name!r})")
        self.used[name] = node

    def opaque_use(self, node: fx.Node) -> None:
        for lab in self.labs((node.args, node.kwargs)):
            self.opaque.append((node, lab.atoms))
        for v in _flat(self.val((node.args, node.kwargs))):
            if isinstance(v, _Param) and _is_layer_or_bn(self.mods[v.module]):
                raise _refuse(node, f"parameter {v.module}.{v.leaf} of a Conv/Linear/BatchNorm is used outside "
                                    "its own call")

    # -- the walk ------------------------------------------------------------------------------

    def run(self, graph: fx.Graph) -> GraphAnalysis:
        for node in graph.nodes:
            self.env[node] = self.visit(node)
        for node, atoms in self.opaque:  # KMR.structured.graph-refuse: decided once pins are known
            free = [a for a in self.uf.leaves(atoms) if not self.uf.pinned[self.uf.find(a)]]
            if free:
                a = free[0]
                raise _refuse(node, f"not covered by the grouping rules, and it reads the prunable channels of "
                                    f"{self.uf.creator[self.uf.find(a)]!r}")
        return self._result()

    def visit(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            return None  # KMR.structured.graph-fixed: the inputs' channels never change
        if node.op == "get_attr":
            *path, leaf = str(node.target).split(".")
            owner = ".".join(path)
            if owner in self.mods and leaf in self.mods[owner]._parameters:
                return _Param(owner, leaf)
            return None
        if node.op == "output":
            # KMR.structured.graph-output: the output shape is kept
            self.pin(Lab("feat", self.deps(node.args)))
            return OTHER
        if node.op == "call_module":
            return self.call_module(node)
        if node.op == "call_function":
            return self.call_function(node)
        assert node.op == "call_method"
        return self.call_method(node)

    def call_module(self, node: fx.Node) -> Any:
        name = str(node.target)
        m = self.mods[name]
        x = self.val(node.args[0]) if node.args else None
        t = type(m)
        if t in (nn.Linear, *_CONV):
            if len(node.args) != 1 or node.kwargs:
                return self.opaque_call(node)
            self.use_module(node, name)
            return self.layer(node, name, m, x)  # type: ignore[arg-type]
        if t in _BN:
            if len(node.args) != 1 or node.kwargs:
                return self.opaque_call(node)
            self.use_module(node, name)
            return self.bn(node, name, m, x)
        if t in _ELEMENTWISE_MODULES:  # KMR.structured.graph-elementwise
            return x if isinstance(x, Lab) or x is None else self.opaque_call(node)
        if t in _POOL_MODULES or t in _PAD_MODULES:  # KMR.structured.graph-spatial
            k = int(t.__name__[-2])
            return self.spatial(node, x, k)
        if t is nn.Flatten:
            assert isinstance(m, nn.Flatten)
            if m.start_dim == 1 and m.end_dim == -1:
                return self.flatten(node, x)
            return self.opaque_call(node)
        return self.opaque_call(node)

    def opaque_call(self, node: fx.Node) -> Any:
        """``KMR.structured.graph-refuse``: an operation the rules do not cover; allowed only when
        every channel it reads is fixed (checked at the end); its result is fixed."""
        self.opaque_use(node)
        return self.fixed(self.deps((node.args, node.kwargs)))

    def layer(self, node: fx.Node, name: str, m: Layer, x: Any) -> Any:
        """``KMR.structured.graph-layer`` / ``graph-depthwise``."""
        if isinstance(x, Dep):
            x = None  # KMR.structured.graph-fixed
        if isinstance(m, nn.Linear):
            if isinstance(x, Lab):
                if x.kind == "feat":
                    if _total(self.uf, x.atoms) != m.in_features:
                        raise _refuse(node, f"{name!r} has {m.in_features} inputs, its input carries "
                                            f"{_total(self.uf, x.atoms)} channels")
                    self.consumers.append(Consumer(name, m, x.atoms, 1))
                elif x.kind == "flat":  # KMR.structured.graph-flatten
                    c = _total(self.uf, x.atoms)
                    if m.in_features % c != 0:
                        raise _refuse(node, f"{name!r} has {m.in_features} inputs, not a multiple of the "
                                            f"{c} flattened channels")
                    self.consumers.append(Consumer(name, m, x.atoms, m.in_features // c))
                else:
                    raise _refuse(node, f"Linear {name!r} reads the last dim of a conv tensor whose channels "
                                        "(dim 1) are prunable")
            elif x is not None:
                return self.opaque_call(node)
            a = self.uf.new(m.out_features, name)
            self.members.append(Member(name, m, "layer", (a,)))
            return Lab("feat", (a,))
        k = len(m.kernel_size)
        if isinstance(x, Lab) and (x.kind != "conv" or x.nd != k + 2):
            raise _refuse(node, f"{type(m).__name__} {name!r} reads a tensor whose prunable channels are not "
                                f"dim 1 of a {k + 2}-dim tensor")
        if x is not None and not isinstance(x, Lab):
            return self.opaque_call(node)
        if m.groups == 1:
            if isinstance(x, Lab):
                if _total(self.uf, x.atoms) != m.in_channels:
                    raise _refuse(node, f"{name!r} has {m.in_channels} input channels, its input carries "
                                        f"{_total(self.uf, x.atoms)}")
                self.consumers.append(Consumer(name, m, x.atoms, 1))
            a = self.uf.new(m.out_channels, name)
            self.members.append(Member(name, m, "layer", (a,)))
            return Lab("conv", (a,), k + 2)
        if m.groups == m.in_channels == m.out_channels:  # KMR.structured.graph-depthwise
            if x is None:
                return None  # a depthwise conv of fixed channels: fixed
            if _total(self.uf, x.atoms) != m.in_channels:
                raise _refuse(node, f"{name!r} has {m.in_channels} channels, its input carries "
                                    f"{_total(self.uf, x.atoms)}")
            self.members.append(Member(name, m, "depthwise", x.atoms))
            return x
        raise _refuse(node, f"grouped convolution {name!r} (groups={m.groups}, {m.in_channels} -> "
                            f"{m.out_channels} channels) is not covered")

    def bn(self, node: fx.Node, name: str, m: nn.Module, x: Any) -> Any:
        """``KMR.structured.graph-bn``."""
        assert isinstance(m, _BN)
        if x is None or isinstance(x, Dep):
            return x
        if not isinstance(x, Lab):
            return self.opaque_call(node)
        dims = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}[type(m)]
        ok = (x.kind == "conv" and x.nd in dims) or (x.kind == "feat" and type(m) is nn.BatchNorm1d)
        if not ok:
            raise _refuse(node, f"{type(m).__name__} {name!r} does not normalize the prunable channels")
        if _total(self.uf, x.atoms) != m.num_features:
            raise _refuse(node, f"{name!r} has {m.num_features} features, its input carries "
                                f"{_total(self.uf, x.atoms)} channels")
        self.members.append(Member(name, m, "bn", x.atoms))
        return x

    def spatial(self, node: fx.Node, x: Any, k: int) -> Any:
        """``KMR.structured.graph-spatial``: pooling / padding of the last k dims of a conv tensor."""
        if x is None or isinstance(x, Dep):
            return x
        if isinstance(x, Lab) and x.kind == "conv" and k <= x.nd - 2:
            return x
        return self.opaque_call(node)

    def flatten(self, node: fx.Node, x: Any) -> Any:
        """``KMR.structured.graph-flatten``: dims 1.. of a conv tensor into one."""
        if x is None or isinstance(x, Dep):
            return x
        if isinstance(x, Lab) and x.kind == "conv":
            return Lab("flat", x.atoms)
        return self.opaque_call(node)

    def binary(self, node: fx.Node, a: Any, b: Any) -> Any:
        """``KMR.structured.graph-add``: elementwise binary operations (broadcasting)."""
        tensors = [v for v in (a, b) if isinstance(v, (Lab, Dep)) or v is None]
        if not tensors:
            return _Int(False)
        if any(isinstance(v, (_Param, _Shape, _Other)) for v in (a, b)):
            return self.opaque_call(node)
        la = [v for v in (a, b) if isinstance(v, Lab)]
        if any(isinstance(v, Dep) for v in (a, b)):  # a fixed operand: it pins the other's channels
            for lab in la:
                self.pin(lab)
            return self.fixed(self.deps(node.args))
        if len(la) == 2:
            x, y = la
            if x.kind != y.kind or x.nd != y.nd or x.kind == "flat":
                raise _refuse(node, "the operands carry prunable channels on different dimensions")
            tx, ty = _total(self.uf, x.atoms), _total(self.uf, y.atoms)
            if tx != ty:
                raise _refuse(node, f"the operands carry {tx} and {ty} prunable channels")
            # KMR.structured.graph-add: runs of different boundaries are split to common ones
            xl, yl = _refine(self.uf, x.atoms, y.atoms)
            for i, j in zip(xl, yl, strict=True):
                self.uf.union(i, j)
            return x
        if len(la) == 1 and len(tensors) == 2:  # a fixed tensor operand: its channels pin these
            self.pin(la[0])
            return self.fixed(la[0].atoms)
        return la[0] if la else None

    def call_function(self, node: fx.Node) -> Any:
        f = node.target
        args, kwargs = node.args, node.kwargs
        if isinstance(f, _CustomFunction):
            return self.opaque_call(node)
        if f in _CONV_FUNCTIONS or f is F.linear:
            return self.functional_layer(node)
        if f in _BINARY_FUNCTIONS and len(args) == 2 and not kwargs:
            return self.binary(node, self.val(args[0]), self.val(args[1]))
        if f in _ELEMENTWISE_FUNCTIONS:
            return self.elementwise(node)
        if f in _POOL_FUNCTIONS:
            return self.spatial(node, self.val(args[0]), _POOL_FUNCTIONS[f])
        if f is F.pad:
            pad = self.val(args[1]) if len(args) > 1 else self.val(kwargs.get("pad"))
            if isinstance(pad, (tuple, list)) and all(isinstance(p, int) for p in pad) and len(pad) % 2 == 0:
                return self.spatial(node, self.val(args[0]), len(pad) // 2)
            return self.opaque_call(node)
        if f in (torch.cat, torch.concat):
            return self.cat(node)
        if f is torch.flatten:
            return self.flatten_call(node, args[1:], kwargs)
        if f is getattr and len(args) == 2 and args[1] == "shape":
            v = self.val(args[0])
            return _Shape(v if isinstance(v, Lab) else None) if isinstance(v, (Lab, Dep)) or v is None \
                else self.opaque_call(node)
        if f is operator.getitem:
            return self.getitem(node)
        return self.opaque_call(node)

    def elementwise(self, node: fx.Node) -> Any:
        """``KMR.structured.graph-elementwise`` (refusing in-place forms: ``graph-inplace``)."""
        x = self.val(node.args[0]) if node.args else None
        if isinstance(x, Lab) and _inplace(node):
            raise _refuse(node, "an in-place operation on prunable channels", f"{CLAUSE}.graph-inplace")
        extra = self.labs((node.args[1:], node.kwargs))
        if extra or not (isinstance(x, (Lab, Dep)) or x is None):
            return self.opaque_call(node)
        return x

    def functional_layer(self, node: fx.Node) -> Any:
        """``KMR.structured.graph-layer``: ``F.conv*d`` / ``F.linear`` with a module's own weight
        and bias and, for a conv, its own stride, padding, dilation and groups."""
        f = node.target
        names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
        bound = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
        w, b = self.val(bound.get("weight")), self.val(bound.get("bias"))
        if not isinstance(w, _Param) or w.leaf != "weight":
            return self.opaque_call(node)
        m = self.mods[w.module]
        want = (nn.Linear,) if f is F.linear else (_CONV[_CONV_FUNCTIONS[f] - 1],)  # type: ignore[index]
        if not isinstance(m, want):
            return self.opaque_call(node)
        if not (b is None and getattr(m, "bias", None) is None) and b != _Param(w.module, "bias"):
            raise _refuse(node, f"the bias is not {w.module!r}'s own")
        if f is not F.linear:
            assert isinstance(m, _CONV)
            own = {"stride": m.stride, "padding": m.padding, "dilation": m.dilation, "groups": m.groups}
            defaults = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}
            for key, mine in own.items():
                got = self.val(bound.get(key, defaults[key]))
                if _norm(got, len(m.kernel_size)) != _norm(mine, len(m.kernel_size)):
                    raise _refuse(node, f"{key}={got!r} is not {w.module!r}'s own {key}={mine!r}")
        self.use_module(node, w.module)
        return self.layer(node, w.module, m, self.val(bound.get("input")))

    def cat(self, node: fx.Node) -> Any:
        """``KMR.structured.graph-cat``: concatenation along the channel dim."""
        parts = self.val(node.args[0]) if node.args else self.val(node.kwargs.get("tensors"))
        dim = self.val(node.args[1]) if len(node.args) > 1 else self.val(node.kwargs.get("dim", 0))
        if not isinstance(parts, (tuple, list)) or not isinstance(dim, int):
            return self.opaque_call(node)
        labs = [p for p in parts if isinstance(p, Lab)]
        if not labs:
            return self.fixed(self.deps(node.args)) if all(p is None or isinstance(p, Dep) for p in parts) \
                else self.opaque_call(node)
        if any(p is None or isinstance(p, Dep) for p in parts):  # a fixed part: every part is kept
            for lab in labs:
                self.pin(lab)
            return self.fixed(self.deps(node.args))
        if len(labs) != len(parts):
            return self.opaque_call(node)
        first = labs[0]
        same = all(p.kind == first.kind and p.nd == first.nd for p in labs)
        ok = same and ((first.kind == "conv" and dim in (1, 1 - first.nd)) or (first.kind == "feat" and dim == -1))
        if not ok:
            raise _refuse(node, f"concatenation along dim {dim} is not along the prunable channels")
        return Lab(first.kind, tuple(a for p in labs for a in p.atoms), first.nd)

    def flatten_call(self, node: fx.Node, rest: Sequence[Any], kwargs: Any) -> Any:
        start = self.val(rest[0]) if rest else self.val(kwargs.get("start_dim", 0))
        end = self.val(rest[1]) if len(rest) > 1 else self.val(kwargs.get("end_dim", -1))
        x = self.val(node.args[0])
        if start == 1 and end == -1:
            return self.flatten(node, x)
        return self.opaque_call(node)

    def getitem(self, node: fx.Node) -> Any:
        obj, idx = self.val(node.args[0]), self.val(node.args[1])
        if isinstance(obj, _Shape):
            return self.shape_entry(node, obj.lab, idx)
        if isinstance(obj, _Int):
            return _Int(False)
        return self.opaque_call(node)

    def shape_entry(self, node: fx.Node, lab: Lab | None, idx: Any) -> Any:
        """``KMR.structured.graph-flatten``: a tensor's size of dim 0 is the batch size; a size
        read from the prunable channel dim is refused (``graph-refuse``)."""
        if isinstance(idx, int) and idx == 0:
            return _Int(True)
        if lab is None:
            return _Int(False) if isinstance(idx, int) else OTHER
        if lab.kind == "conv":
            dims = list(range(lab.nd))
            sel = [dims[idx]] if isinstance(idx, int) and -lab.nd <= idx < lab.nd else (
                dims[idx] if isinstance(idx, slice) else None)
            if sel is not None and 1 not in sel:
                return _Int(False) if isinstance(idx, int) else OTHER
        raise _refuse(node, "reads the size of a dimension that carries prunable channels")

    def call_method(self, node: fx.Node) -> Any:
        meth = str(node.target)
        args = node.args
        x = self.val(args[0])
        if not (isinstance(x, (Lab, Dep)) or x is None):
            return self.opaque_call(node)
        if meth == "size":
            lab = x if isinstance(x, Lab) else None
            if len(args) == 1 and not node.kwargs:
                return _Shape(lab)
            return self.shape_entry(node, lab, self.val(args[1]) if len(args) > 1 else self.val(node.kwargs["dim"]))
        if meth in ("dim", "ndimension"):
            return _Int(False)
        if meth in _ELEMENTWISE_METHODS and len(args) == 1 and not node.kwargs:
            return x
        if meth in _BINARY_METHODS and len(args) == 2 and not node.kwargs:
            return self.binary(node, x, self.val(args[1]))
        if meth.endswith("_") and isinstance(x, Lab):  # KMR.structured.graph-inplace
            raise _refuse(node, "an in-place operation on prunable channels", f"{CLAUSE}.graph-inplace")
        if meth in ("view", "reshape"):
            shape = [self.val(a) for a in args[1:]]
            if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
                shape = list(shape[0])
            if len(shape) == 2 and isinstance(shape[0], _Int) and shape[0].batch and shape[1] == -1:
                return self.flatten(node, x)  # KMR.structured.graph-flatten: view(N, -1)
            return self.opaque_call(node)
        if meth == "flatten":
            return self.flatten_call(node, args[1:], node.kwargs)
        if meth == "mean" and isinstance(x, Lab) and x.kind == "conv":
            dims = self.val(args[1]) if len(args) > 1 else self.val(node.kwargs.get("dim"))
            keep = self.val(args[2]) if len(args) > 2 else self.val(node.kwargs.get("keepdim", False))
            ds = [dims] if isinstance(dims, int) else list(dims) if isinstance(dims, (tuple, list)) else None
            if keep is True and ds and all(isinstance(d, int) and d % x.nd >= 2 for d in ds):
                return x  # KMR.structured.graph-spatial: a spatial mean, dims kept
        return self.opaque_call(node)

    # -- result --------------------------------------------------------------------------------

    def _result(self) -> GraphAnalysis:
        uf = self.uf
        live = [a for a in range(len(uf.parent)) if a not in uf.children]
        first: dict[int, int] = {}
        parent = {c: b for b, cs in uf.children.items() for c in cs}
        for a in sorted(live, key=lambda a: (_birth(parent, a), uf.lo[a])):
            first.setdefault(uf.find(a), a)
        roots = list(first)  # KMR.structured.graph-group: in the order of their first atom's creation
        index = {r: i for i, r in enumerate(roots)}
        groups = []
        for i, r in enumerate(roots):
            a = first[r]
            name = uf.creator[a] if uf.size[a] == uf.full[a] else f"{uf.creator[a]}[{uf.lo[a]}:{uf.lo[a] + uf.size[a]}]"
            groups.append(Group(i, name, uf.size[a], pinned=uf.pinned[r]))
        for mem in self.members:
            mem.atoms = tuple(uf.leaves(mem.atoms))
        for con in self.consumers:
            con.atoms = tuple(uf.leaves(con.atoms))
        for mem in self.members:
            if mem.role == "bn":
                continue
            off = 0
            for a in mem.atoms:
                assert isinstance(mem.module, (nn.Linear, *_CONV))
                groups[index[uf.find(a)]].rows.append((mem.name, mem.module, off))
                off += uf.size[a]
        return GraphAnalysis(groups, self.members, self.consumers,
                             {a: index[uf.find(a)] for a in live}, list(uf.size))


def _birth(parent: dict[int, int], a: int) -> int:
    """The creation rank of the atom ``a`` was split from (or of ``a``)."""
    while a in parent:
        a = parent[a]
    return a


def _is_layer_or_bn(m: nn.Module) -> bool:
    return isinstance(m, (nn.Linear, *_CONV, *_BN))


def _norm(v: Any, k: int) -> Any:
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return (v,) * k
    if isinstance(v, (tuple, list)):
        return tuple(v) if len(v) != 1 else (v[0],) * k
    return v


def _inplace(node: fx.Node) -> bool:
    if node.kwargs.get("inplace") is True:
        return True
    f = node.target
    try:
        sig = inspect.signature(f)  # type: ignore[arg-type]
        bound = sig.bind(*node.args, **node.kwargs)
    except (TypeError, ValueError):
        return False
    return bound.arguments.get("inplace") is True


# ---------------------------------------------------------------------------------------------
# Removal (KMR.structured.graph-removal)


def keep_lists(an: GraphAnalysis, removed: dict[int, Sequence[int]]) -> dict[int, list[int]]:
    """Per group index with removals: the kept channels in ascending order."""
    out: dict[int, list[int]] = {}
    for gi, rem in removed.items():
        if rem:
            r = set(rem)
            out[gi] = [c for c in range(an.groups[gi].size) if c not in r]
    return out


def _indices(an: GraphAnalysis, atoms: Sequence[int], keep: dict[int, list[int]], block: int) -> list[int] | None:
    idx: list[int] = []
    off = 0
    changed = False
    for a in atoms:
        gi = an.group_of[a]
        size = an.atom_size[a]
        ks = keep.get(gi)
        if ks is not None:
            changed = True
        for c in (range(size) if ks is None else ks):
            idx.extend(range((off + c) * block, (off + c + 1) * block))
        off += size
    return idx if changed else None


def remove_groups(model: nn.Module, an: GraphAnalysis, removed: dict[int, Sequence[int]]) -> nn.Module:
    """``KMR.structured.graph-removal``: delete the removed channels of every group from each
    member's rows (weight dim 0, bias, BatchNorm entries) and each consumer's input columns."""
    new = clone_tree(model)  # KMR.structured.sharing
    keep = keep_lists(an, removed)
    if not keep:
        return new
    out_idx: dict[str, tuple[str, list[int]]] = {}
    for mem in an.members:
        ix = _indices(an, mem.atoms, keep, 1)
        if ix is not None:
            out_idx[mem.name] = (mem.role, ix)
    in_idx: dict[str, list[int]] = {}
    for con in an.consumers:
        ix = _indices(an, con.atoms, keep, con.block)
        if ix is not None:
            in_idx[con.name] = ix
    for name, (role, ix) in out_idx.items():
        src = an_module(an, name)
        mod = new.get_submodule(name)
        t = torch.tensor(ix, dtype=torch.long)
        if role == "bn":
            assert isinstance(src, _BN) and isinstance(mod, _BN)
            for pn, p in src.named_parameters(recurse=False):
                set_parameter(new, f"{name}.{pn}", p.detach().index_select(0, t.to(p.device)))
            for bname in ("running_mean", "running_var"):
                buf = src._buffers.get(bname)
                if buf is not None:
                    mod._buffers[bname] = buf.index_select(0, t.to(buf.device))
            mod.num_features = len(ix)
            continue
        assert isinstance(src, (nn.Linear, *_CONV)) and isinstance(mod, (nn.Linear, *_CONV))
        if src.bias is not None:
            set_parameter(new, f"{name}.bias", src.bias.detach().index_select(0, t.to(src.bias.device)))
        if isinstance(mod, nn.Linear):
            mod.out_features = len(ix)
        else:
            mod.out_channels = len(ix)
            if role == "depthwise":
                mod.in_channels = mod.groups = len(ix)
    for name in dict.fromkeys([*out_idx, *in_idx]):
        role = out_idx.get(name, ("", []))[0]
        if role == "bn":
            continue
        src = an_module(an, name)
        mod = new.get_submodule(name)
        assert isinstance(src, (nn.Linear, *_CONV)) and isinstance(mod, (nn.Linear, *_CONV))
        w = src.weight.detach()
        if name in out_idx:
            w = w.index_select(0, torch.tensor(out_idx[name][1], dtype=torch.long, device=w.device))
        if name in in_idx:  # KMR.structured.graph-removal: the consumers' input columns
            w = w.index_select(1, torch.tensor(in_idx[name], dtype=torch.long, device=w.device))
            if isinstance(mod, nn.Linear):
                mod.in_features = len(in_idx[name])
            else:
                mod.in_channels = len(in_idx[name])
        set_parameter(new, f"{name}.weight", w.contiguous())
    return new


def an_module(an: GraphAnalysis, name: str) -> nn.Module:
    for n, m in an.modules():
        if n == name:
            return m
    raise KeyError(name)


def group_row_scores(group: Group, p: int) -> tuple[list[float], int]:
    """``KMR.structured.graph-score``: S_c = fsum over the entries of every scored member's row
    c + offset of fl64(|w|^p) (one exactly rounded sum over all of them), and the fan-in (entries
    per channel, summed over the members)."""
    per: list[list[float]] = [[] for _ in range(group.size)]
    fan = 0
    for _, m, off in group.rows:
        w = m.weight.detach().to(device="cpu", dtype=torch.float64)
        w = w[off: off + group.size].reshape(group.size, -1).abs()
        if p == 2:
            w = w * w
        fan += int(w.shape[1])
        for c, row in enumerate(w.tolist()):
            per[c].extend(row)
    try:
        scores = [math.fsum(r) for r in per]
    except OverflowError:
        scores = [math.inf]
    if not all(math.isfinite(s) for s in scores):  # KMR.structured.nonfinite
        raise RuleInputError(f"{CLAUSE}.nonfinite", f"a channel score of group {group.name!r} overflows binary64")
    return scores, fan
