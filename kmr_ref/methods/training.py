"""The deterministic training loop shared by the training-based rules (distillation, LoRA, early
exit): ``spec/methods/distillation.md`` section "Determinism" (``KMR.train.*``).

Scope of the determinism (``KMR.train.scope``): the same input bytes, knobs and settings give the
same output bytes on the same device type with the same torch build, in any process. Across CPU
models or torch versions the BLAS kernels may sum in another order, and the bytes may differ.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction

import torch
from torch import nn

from kmr_ref.core.errors import KnobDomainError, RuleInputError
from kmr_ref.core.exact import to_exact

THREADS = 1  # KMR.train.threads: the intra-op thread count inside a training rule
LR = 3e-3  # KMR.train.optimizer
BATCH = 64  # KMR.train.order


@contextlib.contextmanager
def deterministic(seed: int, threads: int = THREADS) -> Iterator[None]:
    """``KMR.train.deterministic``: deterministic algorithms on, ``threads`` intra-op threads, the
    global CPU generator seeded with ``seed``; all three restored on exit (the caller's RNG state
    is untouched: ``torch.random.fork_rng``)."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.use_deterministic_algorithms(True)  # KMR.train.deterministic
        torch.set_num_threads(threads)  # KMR.train.threads
        torch.manual_seed(seed)  # KMR.train.init: every initialization draws from this generator
        try:
            yield
        finally:
            torch.set_num_threads(prev_threads)
            torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


def batch_order(n: int, steps: int, seed: int, batch: int = BATCH) -> list[torch.Tensor]:
    """``KMR.train.order``: the index batches of ``steps`` optimizer steps. Epoch e draws
    ``torch.randperm(n)`` from a ``torch.Generator`` seeded with ``seed`` (one generator, epochs in
    order) and cuts it into consecutive batches of ``batch`` (the last one of an epoch shorter
    when ``batch`` does not divide n); step j takes the j-th batch of that stream."""
    if n <= 0:
        raise RuleInputError("KMR.train.order", "the training split is empty")
    g = torch.Generator(device="cpu").manual_seed(seed)
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            if len(out) == steps:
                break
            out.append(perm[i:i + batch])
    return out


def fit(params: Sequence[nn.Parameter], loss_of: Callable[[torch.Tensor], torch.Tensor], n: int, steps: int,
        seed: int, lr: float = LR) -> None:
    """``KMR.train.optimizer``: Adam (lr 3e-3 unless a rule states another, torch's default betas
    and eps, no weight decay) on ``params``, one step per batch of :func:`batch_order`;
    ``loss_of(idx)`` is the batch loss."""
    opt = torch.optim.Adam(list(params), lr=lr)
    for idx in batch_order(n, steps, seed):  # KMR.train.order
        opt.zero_grad(set_to_none=True)
        loss = loss_of(idx)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()


def frozen_copy(m: nn.Module) -> nn.Module:
    """A copy-on-write clone whose parameters are new ``Parameter`` objects over the same storage
    with ``requires_grad=False`` (the caller's parameters keep their flags: ``KMR.rule.no-mutation``)."""
    from kmr_ref.methods.modules import clone_tree

    out = clone_tree(m)
    for mod in out.modules():
        for k, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[k] = nn.Parameter(p.detach(), requires_grad=False)
    return out


def freeze(model: nn.Module) -> nn.Module:
    """The trained output's form: eval mode, no parameter requires grad (like ``digits.pretrained``)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def check_steps(steps: object, clause: str) -> int:
    """``steps``: an integer >= 1 (booleans refused)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise KnobDomainError(clause, f"steps must be an integer >= 1, got {steps!r}")
    return steps


def check_seed(seed: object, clause: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise KnobDomainError(clause, f"seed must be an integer >= 0, got {seed!r}")
    return seed


def exact_setting(v: object, clause: str, what: str) -> Fraction:
    """A setting given as an exact value (``KMR.exact.binary64`` for floats)."""
    return Fraction(to_exact(v, clause=clause, error=KnobDomainError, what=what))


def check_model(model: nn.Module, clause: str) -> None:
    """``KMR.rule.domain-error`` for the training rules: every parameter and buffer of a floating
    dtype holds finite values; a floating parameter is required (NaN/inf would train NaN)."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise RuleInputError(clause, f"{name} contains NaN or inf")
    for name, p in model.named_parameters():
        if not p.is_floating_point():
            raise RuleInputError(clause, f"{name} has dtype {p.dtype}; a floating dtype is required")


def state_bytes(model: nn.Module) -> bytes:
    """Every state tensor's name, dtype, shape and raw bytes, in ``state_dict`` order (what the
    determinism tests compare)."""
    out = bytearray()
    for k, v in model.state_dict().items():
        t = v.detach().contiguous().cpu()
        out += f"{k}|{t.dtype}|{tuple(t.shape)}|".encode()
        out += t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return bytes(out)
