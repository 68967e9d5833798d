"""Fused linear → (target log-prob, entropy): torch chunked and Triton paths against a float64 full-logits oracle.

Errors are measured as ``max |out − ref| / max |ref|`` per tensor (forward logps, entropy, dH, dW), with the
reference computed in float64 from exactly the inputs the path saw (bf16 inputs are upcast losslessly).

Tolerances:
* fp32 inputs: 1e-5. Every path accumulates in fp32, so its error is float noise of ~1e-7..1e-6 (see the
  report in the module's tests); a real bug (a missing term, a wrong mask, a wrong chunk offset) is O(1e-2..1).
* bf16 inputs, forward: 1e-5 as well — bf16 · bf16 products are exact in fp32 and accumulation is fp32.
* bf16 inputs, gradients: 1e-2 for the torch path, 2e-2 for Triton. The gradients are returned in bf16
  (relative rounding 2⁻⁹ per element, up to 2⁻⁸ ≈ 4e-3 of the largest element; measured ≤ 3e-3 over 7 seeds).
  The Triton backward also rounds dz to bf16 before its GEMMs (as bf16 tensor cores need), and since each dz row
  sums to ~0 (Σ_j (1[j = t] − p_j) = 0) those per-element roundings do not cancel with the result: measured
  ≤ 7.4e-3 over 7 seeds. A real bug (a dropped term, a wrong mask) gives errors of order 1e-1..1.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignkit.kernels.token_logps import (
    resolve_backend,
    token_logps,
    token_logps_reference,
    token_logps_torch,
)

tl_mod = importlib.import_module("alignkit.kernels.token_logps")
REPO = Path(__file__).resolve().parents[1]
TOL_FP32 = 1e-5
TOL_BF16_FWD = 1e-5
TOL_BF16_GRAD = 1e-2
TOL_BF16_GRAD_TRITON = 2e-2
N, D, V = 37, 24, 203  # none of them a multiple of the chunk or block sizes used below
IGNORED = (0, 5, 6, 36)


def make_inputs(seed: int = 0, n: int = N, d: int = D, v: int = V, scale: float = 0.5):
    """float64 H, W (logits of order a few), targets with ignored rows and both vocabulary ends, loss weights."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen, dtype=torch.float64)
    weight = torch.randn(v, d, generator=gen, dtype=torch.float64) * scale
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[[i for i in IGNORED if i < n]] = -100
    targets[1], targets[2] = v - 1, 0
    a = torch.randn(n, generator=gen, dtype=torch.float64)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    return hidden, weight, targets, a, b


def run(fn, hidden, weight, targets, a, b, use=("logps", "entropy"), **kwargs):
    """Forward and backward of (a·logps + b·entropy).sum() (or one of the two terms); float64 results."""
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    logps, entropy = fn(h, w, targets, **kwargs)
    loss = 0
    if "logps" in use:
        loss = loss + (a.to(logps.dtype) * logps).sum()
    if "entropy" in use:
        loss = loss + (b.to(entropy.dtype) * entropy).sum()
    loss.backward()
    return {"logps": logps.double(), "entropy": entropy.double(), "dH": h.grad.double(), "dW": w.grad.double()}


def rel_errors(out: dict, ref: dict) -> dict:
    return {k: ((out[k] - ref[k]).abs().max() / ref[k].abs().max()).item() for k in ref}


def reference(hidden, weight, targets, a, b, use=("logps", "entropy")):
    return run(token_logps_reference, hidden.double(), weight.double(), targets, a, b, use=use)


# --- torch chunked path ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [(10, 50), (1, 7), (16, 64), (64, 4096)])
def test_torch_fp32_matches_reference(chunks):
    hidden, weight, targets, a, b = make_inputs(seed=1)
    rows, vocab = chunks
    out = run(token_logps_torch, hidden.float(), weight.float(), targets, a, b, chunk_rows=rows, chunk_vocab=vocab)
    assert out["logps"].dtype == torch.float64  # (cast by run); the path itself returns fp32:
    assert token_logps_torch(hidden.float(), weight.float(), targets)[0].dtype == torch.float32
    errors = rel_errors(out, reference(hidden, weight, targets, a, b))
    assert max(errors.values()) < TOL_FP32, errors


@pytest.mark.parametrize("use", [("logps",), ("entropy",)])
def test_torch_single_output_gradients(use):
    """Only one output in the loss: the other arrives as grad None in backward."""
    hidden, weight, targets, a, b = make_inputs(seed=2)
    out = run(token_logps_torch, hidden.float(), weight.float(), targets, a, b, use=use, chunk_rows=8,
              chunk_vocab=32)
    errors = rel_errors(out, reference(hidden, weight, targets, a, b, use=use))
    assert max(errors.values()) < TOL_FP32, errors


def test_torch_bf16_matches_reference_on_rounded_inputs():
    hidden, weight, targets, a, b = make_inputs(seed=3)
    h16, w16 = hidden.bfloat16(), weight.bfloat16()
    out = run(token_logps_torch, h16, w16, targets, a, b, chunk_rows=10, chunk_vocab=50)
    errors = rel_errors(out, reference(h16, w16, targets, a, b))
    assert errors["logps"] < TOL_BF16_FWD and errors["entropy"] < TOL_BF16_FWD, errors
    assert errors["dH"] < TOL_BF16_GRAD and errors["dW"] < TOL_BF16_GRAD, errors


def test_torch_low_precision_matches_bf16_logits():
    """``low_precision``: tiles from bf16 GEMMs, i.e. the logits a bf16 LM head gives (rounded to bf16), with fp32
    statistics. Oracle: float64 from those rounded logits. A tile's bf16 GEMM may round an element one bf16 ulp
    (≈ 4e-3 relative) differently from the full GEMM, so the forward tolerance is that of bf16 gradients; the
    gradients are also formed from dz rounded to bf16 (2e-2, as for Triton's bf16 backward)."""
    hidden, weight, targets, a, b = make_inputs(seed=3)
    h16, w16 = hidden.bfloat16(), weight.bfloat16()
    out = run(token_logps_torch, h16, w16, targets, a, b, chunk_rows=10, chunk_vocab=50, low_precision=True)

    def rounded_logits_reference(h, w, t, ignore_index=-100):
        logits = (h.bfloat16() @ w.bfloat16().T).double()  # the bf16 head's logits, then exact math
        valid = t != ignore_index
        lse = torch.logsumexp(logits, -1)
        picked = logits.gather(-1, t.clamp(min=0)[:, None])[:, 0]
        entropy = lse - (torch.softmax(logits, -1) * logits).sum(-1)
        return torch.where(valid, picked - lse, 0.0), torch.where(valid, entropy, 0.0)

    forward = rel_errors(out, run(rounded_logits_reference, h16.double(), w16.double(), targets, a, b))
    assert forward["logps"] < TOL_BF16_GRAD and forward["entropy"] < TOL_BF16_GRAD, forward
    exact = rel_errors(out, reference(h16, w16, targets, a, b))
    assert exact["dH"] < TOL_BF16_GRAD_TRITON and exact["dW"] < TOL_BF16_GRAD_TRITON, exact


def test_torch_ignored_rows_are_zero_and_get_no_gradient():
    hidden, weight, targets, a, b = make_inputs(seed=4)
    out = run(token_logps_torch, hidden.float(), weight.float(), targets, a, b, chunk_rows=10, chunk_vocab=50)
    ignored = list(IGNORED)
    assert out["logps"][ignored].abs().max() == 0 and out["entropy"][ignored].abs().max() == 0
    assert out["dH"][ignored].abs().max() == 0
    assert out["dH"][[1, 2, 3]].abs().min() > 0

    everything_ignored = torch.full_like(targets, -100)
    out = run(token_logps_torch, hidden.float(), weight.float(), everything_ignored, a, b)
    assert all(t.abs().max() == 0 for t in out.values())


def test_torch_entropy_accurate_for_peaked_distributions():
    """Large logits (order 30-100), entropies near 0: still accurate in absolute terms (a sanity check of the
    max-relative accumulator; measured 3e-6, where fp32 ``lse − Σ p z`` on full logits gives 9e-6)."""
    hidden, weight, targets, a, b = make_inputs(seed=5, scale=6.0)  # logits of order 30
    ref = token_logps_reference(hidden, weight, targets)
    logps, entropy = token_logps_torch(hidden.float(), weight.float(), targets, chunk_rows=10, chunk_vocab=50)
    assert ref[0].abs().max() > 20  # the regime is the intended one
    assert (entropy.double() - ref[1]).abs().max() < 2e-5
    assert ((logps.double() - ref[0]).abs().max() / ref[0].abs().max()) < TOL_FP32


def test_torch_rejects_out_of_range_targets():
    hidden, weight, targets, _, _ = make_inputs()
    targets = targets.clone()
    targets[3] = V
    with pytest.raises(IndexError):
        token_logps_torch(hidden.float(), weight.float(), targets)


# --- memory: nothing of N·V elements is saved or created ------------------------------------------------------


def test_torch_saves_only_inputs_and_row_stats():
    hidden, weight, targets, _, _ = make_inputs()
    sizes: list[int] = []

    def pack(t):
        sizes.append(t.numel())
        return t

    h = hidden.float().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_logps_torch(h, weight.float(), targets, chunk_rows=10, chunk_vocab=50)
    assert sorted(sizes) == sorted([N * D, V * D, N, N, N])  # H, W, targets, lse, E_p[z]

    sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_logps_reference(hidden.float().requires_grad_(), weight.float(), targets)
    assert max(sizes) >= N * V  # the counter does see a full-logits save


def test_torch_never_allocates_full_logits():
    """Track the largest tensor any op produces during forward + backward (a torch dispatch mode)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestOutput(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    n, d, v, rows, vocab = 384, 8, 3000, 64, 256
    hidden, weight, targets, a, b = make_inputs(seed=6, n=n, d=d, v=v)
    h = hidden.float().requires_grad_()
    w = weight.float().requires_grad_()
    with LargestOutput() as mode:
        logps, entropy = token_logps_torch(h, w, targets, chunk_rows=rows, chunk_vocab=vocab)
        ((a.float() * logps).sum() + (b.float() * entropy).sum()).backward()
    assert mode.largest <= max(rows * vocab, n * d, v * d) < n * v // 4

    with LargestOutput() as mode:
        token_logps_reference(h, w, targets)
    assert mode.largest >= n * v


# --- dispatcher ----------------------------------------------------------------------------------------------


def test_dispatcher_uses_torch_path_for_cpu_tensors(monkeypatch):
    hidden, weight, targets, _, _ = make_inputs()
    assert resolve_backend(hidden.float()) == "torch"
    calls = []
    real = tl_mod.token_logps_torch

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(tl_mod, "token_logps_torch", spy)
    h = hidden.float()[:36].reshape(4, 9, D)  # leading dims are flattened and restored
    t = targets[:36].reshape(4, 9)
    logps, entropy = token_logps(h, weight.float(), t)
    assert calls == [torch.Size([36, D])] and logps.shape == entropy.shape == (4, 9)
    ref = token_logps(h.double(), weight.double(), t, backend="reference")
    assert (logps.double() - ref[0]).abs().max() < 1e-5 and (entropy.double() - ref[1]).abs().max() < 1e-5

    with pytest.raises(ValueError):
        token_logps(h, weight.float(), t, backend="cuda")
    if tl_mod.HAS_TRITON and not tl_mod._interpreting():
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            token_logps(h, weight.float(), t, backend="triton")


# --- Triton path under the interpreter, in a subprocess ------------------------------------------------------

TRITON_SCRIPT = r"""
import json, os, sys
assert os.environ["TRITON_INTERPRET"] == "1"
import torch
sys.path.insert(0, os.environ["TEST_DIR"])
from test_kernels_token_logps import IGNORED, make_inputs, reference, rel_errors, run
from alignkit.kernels.token_logps import token_logps, token_logps_triton

blocks = dict(block_n=16, block_v=32, block_k=16)  # N=37, d=24, V=203 are multiples of none of them
results = {}
hidden, weight, targets, a, b = make_inputs(seed=11)
for dtype in (torch.float32, torch.bfloat16):
    h, w = hidden.to(dtype), weight.to(dtype)
    out = run(token_logps_triton, h, w, targets, a, b, **blocks)
    name = str(dtype).split(".")[-1]
    results[name] = rel_errors(out, reference(h, w, targets, a, b))
    ignored = list(IGNORED)
    results[name + "_ignored_max"] = max(out[k][ignored].abs().max().item() for k in ("logps", "entropy", "dH"))
for use in (("logps",), ("entropy",)):
    out = run(token_logps_triton, hidden.float(), weight.float(), targets, a, b, use=use, **blocks)
    results["fp32_only_" + use[0]] = rel_errors(out, reference(hidden, weight, targets, a, b, use=use))
# odd block configuration: one block covers all rows, vocabulary blocks of 64 over V=203
out = run(token_logps_triton, hidden.float(), weight.float(), targets, a, b, block_n=64, block_v=64, block_k=32)
results["fp32_big_blocks"] = rel_errors(out, reference(hidden, weight, targets, a, b))
# the dispatcher with an explicit backend on CPU tensors
out = run(lambda h, w, t: token_logps(h, w, t, backend="triton"), hidden.float(), weight.float(), targets, a, b)
results["dispatcher_triton"] = rel_errors(out, reference(hidden, weight, targets, a, b))
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def triton_results() -> dict:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not importable")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", TEST_DIR=str(Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-c", TRITON_SCRIPT], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS "))
    return json.loads(line[len("RESULTS "):])


def test_triton_fp32_matches_reference(triton_results):
    for case in ("float32", "fp32_only_logps", "fp32_only_entropy", "fp32_big_blocks", "dispatcher_triton"):
        errors = triton_results[case]
        assert max(errors.values()) < TOL_FP32, (case, errors)


def test_triton_bf16_matches_reference_on_rounded_inputs(triton_results):
    errors = triton_results["bfloat16"]
    assert errors["logps"] < TOL_BF16_FWD and errors["entropy"] < TOL_BF16_FWD, errors
    assert errors["dH"] < TOL_BF16_GRAD_TRITON and errors["dW"] < TOL_BF16_GRAD_TRITON, errors


def test_triton_ignored_rows_are_zero_and_get_no_gradient(triton_results):
    assert triton_results["float32_ignored_max"] == 0 and triton_results["bfloat16_ignored_max"] == 0
