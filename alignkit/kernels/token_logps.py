r"""Fused LM head → per-token log-prob of the target and entropy, without the full ``[N, V]`` logits.

Math
----
Hidden states ``H [N, d]``, LM-head weight ``W [V, d]`` (no bias), targets ``t [N]``; row ``i`` has logits
``z = H_i Wᵀ`` and ``p = softmax(z)``::

    lse_i     = log Σ_j exp z_j
    logp_i    = z_{t_i} − lse_i
    E_p[z]_i  = Σ_j p_j z_j
    entropy_i = lse_i − E_p[z]_i = −Σ_j p_j log p_j

Rows with ``t_i == ignore_index`` give 0 for both and receive no gradient. Everything is accumulated in fp32,
also for bf16 inputs; both outputs are fp32 of shape ``(N,)``.

Forward, online over vocabulary chunks (the "online softmax" recurrence). With running max ``m``, running
``s = Σ exp(z_j − m)`` and running ``b = Σ exp(z_j − m)(z_j − m)``, a new chunk with max ``m'`` (≥ m) updates::

    α  = exp(m − m')
    b ← α · (b + (m − m') · s) + Σ_chunk exp(z_j − m')(z_j − m')
    s ← α · s + Σ_chunk exp(z_j − m')
    lse = m + log s,     E_p[z] = m + b / s,     entropy = log s − b / s

Keeping ``b`` relative to the running max avoids the cancellation of ``lse − E_p[z]`` when logits are large
and the entropy small. The target logit is read from the one chunk that holds column ``t_i``.

Backward, per row, with upstream gradients ``g_logp`` and ``g_ent``::

    ∂logp/∂z_j    = 1[j = t] − p_j
    ∂entropy/∂z_j = −p_j (z_j − E_p[z])
    dz_j          = g_logp (1[j = t] − p_j) − g_ent p_j (z_j − E_p[z])
    dH = dz W,    dW = dzᵀ H

Forward saves only ``H``, ``W``, ``t`` and the per-row stats ``(lse, E_p[z])``; backward recomputes each
logits tile from them, so the extra memory is one tile, never ``N × V``.

Backends
--------
``token_logps_reference``  full logits in plain torch (the test oracle; float64 inputs give a float64 oracle).
``token_logps_torch``      chunked over rows and vocabulary in plain torch (CPU path, any device).
``token_logps_triton``     Triton kernels (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``).
``token_logps``            dispatcher: Triton for CUDA tensors when triton imports, the torch path otherwise.

Triton kernel design
--------------------
Forward: one program per block of ``BLOCK_N`` rows loops over vocabulary blocks; each logits tile
``[BLOCK_N, BLOCK_V]`` is ``tl.dot`` accumulated over ``BLOCK_K`` slices of ``d`` in fp32, then folded into the
online (m, s, b) stats and the target logit. Writes logp, entropy, lse, E_p[z] (16 bytes a row).

Backward: one program per ``(row block, vocabulary block)`` tile (grouped launch order so that concurrently
running tiles share rows of ``H`` and ``W`` in L2). It recomputes the logits tile, forms ``dz`` in fp32, and
then, for each ``BLOCK_K`` slice of ``d``, atomically adds ``dz · W[v, k]`` into an fp32 ``dH`` buffer and
``dzᵀ · H[n, k]`` into an fp32 ``dW`` buffer. Why atomics for both: a ``[BLOCK_N, d]`` (or ``[BLOCK_V, d]``)
accumulator does not fit in registers for d = 4096, so a "loop over vocabulary, own the dH rows" program would
either recompute the logits ``d / BLOCK_K`` times (one program per slice of d) or read-modify-write its dH rows
in global memory once per vocabulary block, which moves the same bytes as the atomics with far fewer programs
to spread them over. One 2-D grid recomputes the logits exactly once and has ``(N/BLOCK_N)·(V/BLOCK_V)``-way
parallelism. The price: fp32 summation order is not fixed (results are not bitwise reproducible), the fp32
gradient buffers (``(N + V)·d·4`` bytes) exist for bf16 inputs, and the atomic traffic (below).

Bytes moved per training step (forward + backward) — a prediction, not a measurement
-------------------------------------------------------------------------------------
``e`` = element size of H and W (2 for bf16). Counting compulsory DRAM traffic, as the Triton tutorials do
(operand re-reads of a tiled GEMM through L2 are ignored, equally for both paths):

Plain path (logits materialised once in dtype e; one fused softmax/stats kernel; backward writes dZ once)::

    forward   GEMM reads H, W: (N + V)·d·e, writes Z: N·V·e; stats kernel reads Z: N·V·e
    backward  dZ kernel reads Z, writes dZ: 2·N·V·e; GEMM dH reads dZ, W; GEMM dW reads dZ, H:
              2·N·V·e + (N + V)·d·e; writes dH, dW: (N + V)·d·e
    total     3·(N + V)·d·e + 6·N·V·e            (plus O(N)); peak extra memory N·V·e (Z, dZ in place)

Fused path (this module's Triton kernels)::

    forward   reads H, W: (N + V)·d·e, writes 16·N
    backward  reads H, W: (N + V)·d·e; fp32 gradient buffers: zero-fill 4, first-touch read 4 and final
              write-back 4 bytes an element: 12·(N + V)·d; for e ≠ 4 a cast pass reads 4, writes e: (4 + e)·(N + V)·d
    total     2·(N + V)·d·e + (12 + [e ≠ 4]·(4 + e))·(N + V)·d     (plus O(N)); peak extra O(N) + fp32 grad buffers

For N = 8192, d = 4096, V = 128256, bf16 (e = 2): (N + V)·d = 5.59e8, N·V = 1.05e9, so the plain path is
predicted to move 3·5.59e8·2 + 6·1.05e9·2 ≈ 16.0 GB and the fused path 5.59e8·(4 + 12 + 6) ≈ 12.3 GB:
a predicted ratio of ≈ 1.3× fewer DRAM bytes (≈ 4.8× if the gradients were accumulated in place in bf16,
3·(N + V)·d·e ≈ 3.4 GB), and the 2 GiB bf16 logits (4 GiB if upcast to fp32, as eager code often does) never
exist. Two further predictions that matter more than the DRAM bytes at this size: the fused path does 4 instead
of 3 GEMM-sized products (2·N·V·d FLOPs each, ≈ 8.6 TFLOP), because backward recomputes the logits, and its
atomics send N·V·d·(1/BLOCK_V + 1/BLOCK_N)·4 bytes of fp32 reductions to L2 (≈ 400 GB for the default 64 × 128
tiles) — the likely bottleneck of the backward kernel. None of these numbers has been measured here.
"""

from __future__ import annotations

import os

import torch

try:  # triton is optional: the torch paths work without it
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = [
    "HAS_TRITON",
    "token_logps",
    "token_logps_reference",
    "token_logps_torch",
    "token_logps_triton",
]

IGNORE_INDEX = -100
"""Target value that marks a position with no target, as in ``torch.nn.functional.cross_entropy``."""

# CPU defaults from a light single-thread measurement (fwd + bwd, N=2048, d=256, V=8192, on a shared machine):
# tiles of 256 × 1024 .. 256 × 2048 fp32 (1-2 MiB, cache-sized) ran ≈ 20-35 % faster than 1024 × 4096 and
# ≈ 2× faster than the full-logits reference; the Python loop overhead per tile is negligible at these sizes.
DEFAULT_CHUNK_ROWS = 256
DEFAULT_CHUNK_VOCAB = 2048


# --------------------------------------------------------------------------------------------------------------
# Reference: full logits
# --------------------------------------------------------------------------------------------------------------


def token_logps_reference(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``(logp of target, entropy)`` from the full ``[N, V]`` logits, in plain torch.

    Computes in ``promote(dtype, float32)``: bf16/fp16 inputs are upcast to fp32, float64 inputs stay float64
    (the test oracle). Ignored rows give 0 and, through ``torch.where``, no gradient.
    """
    dtype = torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)
    logits = hidden.to(dtype) @ weight.to(dtype).T
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
    lse = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    probs = torch.softmax(logits, dim=-1)
    entropy = lse - (probs * logits).sum(-1)
    zero = torch.zeros((), dtype=dtype, device=logits.device)
    return torch.where(valid, target_logit - lse, zero), torch.where(valid, entropy, zero)


# --------------------------------------------------------------------------------------------------------------
# Torch chunked path
# --------------------------------------------------------------------------------------------------------------


def _check_targets(targets: torch.Tensor, valid: torch.Tensor, vocab: int) -> None:
    bad = valid & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        raise IndexError(f"targets must lie in [0, {vocab}) or equal ignore_index")


def _tile_operands(hidden: torch.Tensor, weight: torch.Tensor, low_precision: bool) -> tuple[torch.Tensor, ...]:
    """What the tile GEMMs multiply: fp32 copies (exact products of bf16 values), or the bf16 tensors themselves
    with ``low_precision`` (a bf16 GEMM, whose output is rounded to bf16 as a plain bf16 LM head's logits are)."""
    if low_precision and hidden.dtype == weight.dtype and hidden.dtype in (torch.bfloat16, torch.float16):
        return hidden, weight
    return hidden.float(), weight.float()


def _chunked_stats(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int, chunk_vocab: int,
    low_precision: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Online (lse, E_p[z], entropy, target logit) over vocabulary chunks for rows that all have a target.

    Loops vocabulary chunks outside and row chunks inside, so each ``W`` chunk is upcast once.
    """
    hidden, weight = _tile_operands(hidden, weight, low_precision)
    n = hidden.shape[0]
    vocab = weight.shape[0]
    f32 = dict(dtype=torch.float32, device=hidden.device)
    m = torch.empty(n, **f32)  # running max
    s = torch.empty(n, **f32)  # Σ exp(z − m)
    b = torch.empty(n, **f32)  # Σ exp(z − m)(z − m)
    z_target = torch.zeros(n, **f32)
    for c0 in range(0, vocab, chunk_vocab):
        w_chunk = weight[c0:c0 + chunk_vocab]
        local = targets - c0
        in_chunk = (local >= 0) & (local < w_chunk.shape[0])
        for r0 in range(0, n, chunk_rows):
            rows = slice(r0, r0 + chunk_rows)
            z = (hidden[rows] @ w_chunk.T).float()
            z_max = z.amax(dim=1)
            if c0 == 0:
                m_new = z_max
            else:
                m_new = torch.maximum(m[rows], z_max)
            shifted = z - m_new[:, None]
            e = shifted.exp()
            chunk_s = e.sum(dim=1)
            chunk_b = (e * shifted).sum(dim=1)
            if c0 == 0:
                s[rows] = chunk_s
                b[rows] = chunk_b
            else:
                delta = m[rows] - m_new
                alpha = delta.exp()
                b[rows] = alpha * (b[rows] + delta * s[rows]) + chunk_b
                s[rows] = alpha * s[rows] + chunk_s
            m[rows] = m_new
            hit = in_chunk[rows]
            picked = z.gather(1, local[rows].clamp(0, w_chunk.shape[0] - 1)[:, None]).squeeze(1)
            z_target[rows] += torch.where(hit, picked, torch.zeros_like(picked))
    log_s = s.log()
    mean_shift = b / s
    return m + log_s, m + mean_shift, log_s - mean_shift, z_target


class _ChunkedTokenLogps(torch.autograd.Function):
    """Chunked torch forward/backward; saves H, W, targets and per-row (lse, E_p[z]) only."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk_rows, chunk_vocab, low_precision):
        n = hidden.shape[0]
        vocab = weight.shape[0]
        valid = targets != ignore_index
        _check_targets(targets, valid, vocab)
        idx = valid.nonzero().squeeze(1)
        f32 = dict(dtype=torch.float32, device=hidden.device)
        logps = torch.zeros(n, **f32)
        entropy = torch.zeros(n, **f32)
        lse = torch.zeros(n, **f32)
        mean_z = torch.zeros(n, **f32)
        if idx.numel() > 0:
            compact = idx.numel() < n  # skip ignored rows (prompt/padding) entirely
            h = hidden.index_select(0, idx) if compact else hidden
            t = targets.index_select(0, idx) if compact else targets
            v_lse, v_mean, v_ent, v_zt = _chunked_stats(h, weight, t, chunk_rows, chunk_vocab, low_precision)
            logps[idx] = v_zt - v_lse
            entropy[idx] = v_ent
            lse[idx] = v_lse
            mean_z[idx] = v_mean
        ctx.save_for_backward(hidden, weight, targets, lse, mean_z)
        ctx.ignore_index = ignore_index
        ctx.chunk_rows = chunk_rows
        ctx.chunk_vocab = chunk_vocab
        ctx.low_precision = low_precision
        ctx.set_materialize_grads(False)
        return logps, entropy

    @staticmethod
    def backward(ctx, grad_logps, grad_entropy):
        hidden, weight, targets, lse, mean_z = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if (grad_logps is None and grad_entropy is None) or not (need_h or need_w):
            return None, None, None, None, None, None, None
        n, d = hidden.shape
        vocab = weight.shape[0]
        rows_r, cols_c = ctx.chunk_rows, ctx.chunk_vocab
        valid = targets != ctx.ignore_index
        idx = valid.nonzero().squeeze(1)
        f32 = dict(dtype=torch.float32, device=hidden.device)
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_h_valid = torch.zeros(idx.numel(), d, **f32) if need_h else None
        if idx.numel() > 0:
            h, w = _tile_operands(hidden.index_select(0, idx), weight, ctx.low_precision)
            t = targets.index_select(0, idx)
            v_lse = lse.index_select(0, idx)
            v_mean = mean_z.index_select(0, idx)
            g_lp = grad_logps.float().index_select(0, idx) if grad_logps is not None else None
            g_ent = grad_entropy.float().index_select(0, idx) if grad_entropy is not None else None
            for c0 in range(0, vocab, cols_c):
                w_chunk = w[c0:c0 + cols_c]
                width = w_chunk.shape[0]
                local = t - c0
                in_chunk = (local >= 0) & (local < width)
                dw_chunk = torch.zeros(width, d, **f32) if need_w else None
                for r0 in range(0, idx.numel(), rows_r):
                    rows = slice(r0, r0 + rows_r)
                    h_rows = h[rows]
                    z = (h_rows @ w_chunk.T).float()
                    p = (z - v_lse[rows, None]).exp()
                    # dz = g_logp (onehot − p) − g_ent p (z − E_p[z])
                    if g_ent is not None:
                        coef = g_ent[rows, None] * (z - v_mean[rows, None])
                        if g_lp is not None:
                            coef += g_lp[rows, None]
                    else:
                        coef = g_lp[rows, None]
                    dz = p.mul_(coef).neg_()
                    if g_lp is not None:
                        hit = in_chunk[rows].nonzero().squeeze(1)
                        if hit.numel() > 0:
                            dz[hit, local[rows][hit]] += g_lp[rows][hit]
                    if w_chunk.dtype == torch.float32:
                        if need_h:
                            grad_h_valid[rows].addmm_(dz, w_chunk)
                        if need_w:
                            dw_chunk.addmm_(dz.T, h_rows)
                    else:  # low precision: dz rounded to bf16 for a bf16 GEMM, products summed in fp32
                        dz_low = dz.to(w_chunk.dtype)
                        if need_h:
                            grad_h_valid[rows] += dz_low @ w_chunk
                        if need_w:
                            dw_chunk += dz_low.T @ h_rows
                if need_w:
                    grad_w[c0:c0 + width] = dw_chunk
        grad_h = None
        if need_h:
            grad_h = torch.zeros_like(hidden)
            grad_h[idx] = grad_h_valid.to(hidden.dtype)
        return grad_h, grad_w, None, None, None, None, None


def token_logps_torch(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_vocab: int = DEFAULT_CHUNK_VOCAB,
    low_precision: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked torch path: ``hidden [N, d]``, ``weight [V, d]``, ``targets [N]`` → fp32 ``(logps, entropy)``.

    Memory beyond inputs and gradients is O(chunk_rows · chunk_vocab) fp32 (plus an fp32 copy of W and, for bf16
    inputs, of the rows); ignored rows are dropped before any matmul. ``low_precision`` (bf16/fp16 inputs only):
    the logits tiles and the backward GEMMs run in the inputs' dtype, as a bf16 LM head under autocast does —
    logits rounded to bf16, statistics still accumulated in fp32. On a CPU with AMX a bf16 GEMM is ~4× an fp32
    one; without it, leave it off. Without the flag, bf16 products are formed exactly in fp32.
    """
    _check_shapes(hidden, weight, targets)
    if chunk_rows < 1 or chunk_vocab < 1:
        raise ValueError("chunk sizes must be positive")
    return _ChunkedTokenLogps.apply(hidden, weight, targets, ignore_index, int(chunk_rows), int(chunk_vocab),
                                    bool(low_precision))


def _check_shapes(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or targets.dim() != 1:
        raise ValueError(f"expected hidden [N, d], weight [V, d], targets [N]; got {tuple(hidden.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(targets.shape)}")
    if hidden.shape[1] != weight.shape[1] or hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"shape mismatch: hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}, "
                         f"targets {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError("targets must be an integer tensor")


# --------------------------------------------------------------------------------------------------------------
# Triton path
# --------------------------------------------------------------------------------------------------------------


def _interpreting() -> bool:
    """True when triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1`` before import)."""
    if not HAS_TRITON:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


if HAS_TRITON:

    @triton.jit
    def _logits_tile(H, W, offs_n, offs_v, row_ok, col_ok, D, stride_hn, stride_hd, stride_wv, stride_wd,
                     BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                     DOT_F32: tl.constexpr, IN_PREC: tl.constexpr):
        """z[BLOCK_N, BLOCK_V] = H[offs_n] · W[offs_v]ᵀ, fp32 accumulation over BLOCK_K slices of d."""
        z = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
        offs_k = tl.arange(0, BLOCK_K)
        for k0 in range(0, D, BLOCK_K):
            kk = k0 + offs_k
            k_ok = kk < D
            h = tl.load(H + offs_n[:, None] * stride_hn + kk[None, :] * stride_hd,
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w_t = tl.load(W + offs_v[None, :] * stride_wv + kk[:, None] * stride_wd,
                          mask=col_ok[None, :] & k_ok[:, None], other=0.0)
            if DOT_F32:  # the interpreter's tl.dot mishandles bf16; bf16 products are exact in fp32 anyway
                h = h.to(tl.float32)
                w_t = w_t.to(tl.float32)
            z = tl.dot(h, w_t, z, input_precision=IN_PREC)
        return z

    @triton.jit
    def _token_logps_fwd_kernel(
        H, W, T, LOGP, ENT, LSE, MEANZ,
        N, V, D, stride_hn, stride_hd, stride_wv, stride_wd, ignore_index,
        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
        DOT_F32: tl.constexpr, IN_PREC: tl.constexpr,
    ):
        """One program per BLOCK_N rows: online (m, s, b) over vocabulary blocks, target logit, entropy."""
        pid = tl.program_id(0)
        offs_n = (pid * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        row_ok = offs_n < N
        t = tl.load(T + offs_n, mask=row_ok, other=ignore_index).to(tl.int64)
        m = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
        s = tl.zeros([BLOCK_N], dtype=tl.float32)
        b = tl.zeros([BLOCK_N], dtype=tl.float32)
        z_t = tl.zeros([BLOCK_N], dtype=tl.float32)
        for v0 in range(0, V, BLOCK_V):
            offs_v = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
            col_ok = offs_v < V
            z = _logits_tile(H, W, offs_n, offs_v, row_ok, col_ok, D, stride_hn, stride_hd, stride_wv, stride_wd,
                             BLOCK_N, BLOCK_V, BLOCK_K, DOT_F32, IN_PREC)
            z = tl.where(col_ok[None, :], z, float("-inf"))
            m_new = tl.maximum(m, tl.max(z, axis=1))
            shifted = z - m_new[:, None]
            e = tl.exp(shifted)  # 0 in masked columns
            # First block: m = −inf and s = b = 0; use delta = 0 there so that no −inf · 0 appears.
            delta = tl.where(s > 0.0, m - m_new, 0.0)
            alpha = tl.exp(delta)
            b = alpha * (b + delta * s) + tl.sum(e * tl.where(col_ok[None, :], shifted, 0.0), axis=1)
            s = alpha * s + tl.sum(e, axis=1)
            m = m_new
            z_t += tl.sum(tl.where(offs_v[None, :] == t[:, None], z, 0.0), axis=1)
        log_s = tl.log(s)
        mean_shift = b / s
        lse = m + log_s
        valid = row_ok & (t != ignore_index)
        tl.store(LOGP + offs_n, tl.where(valid, z_t - lse, 0.0), mask=row_ok)
        tl.store(ENT + offs_n, tl.where(valid, log_s - mean_shift, 0.0), mask=row_ok)
        tl.store(LSE + offs_n, lse, mask=row_ok)
        tl.store(MEANZ + offs_n, m + mean_shift, mask=row_ok)

    @triton.jit
    def _token_logps_bwd_kernel(
        H, W, T, LSE, MEANZ, GLP, GENT, DH, DW,
        N, V, D, stride_hn, stride_hd, stride_wv, stride_wd, ignore_index,
        HAS_GLP: tl.constexpr, HAS_GENT: tl.constexpr, NEED_DH: tl.constexpr, NEED_DW: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_N: tl.constexpr,
        DOT_F32: tl.constexpr, IN_PREC: tl.constexpr,
    ):
        """One program per (row block, vocabulary block): recompute z, form dz, atomically add dH and dW."""
        pid = tl.program_id(0)
        num_n = tl.cdiv(N, BLOCK_N)
        num_v = tl.cdiv(V, BLOCK_V)
        # Grouped order: consecutive programs walk GROUP_N row blocks before the next vocabulary block.
        per_group = GROUP_N * num_v
        first_n = (pid // per_group) * GROUP_N
        group_rows = tl.minimum(num_n - first_n, GROUP_N)
        pid_n = first_n + (pid % per_group) % group_rows
        pid_v = (pid % per_group) // group_rows

        offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        offs_v = (pid_v * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
        row_ok = offs_n < N
        col_ok = offs_v < V
        t = tl.load(T + offs_n, mask=row_ok, other=ignore_index).to(tl.int64)
        valid = row_ok & (t != ignore_index)
        lse = tl.load(LSE + offs_n, mask=row_ok, other=0.0)
        mean_z = tl.load(MEANZ + offs_n, mask=row_ok, other=0.0)

        z = _logits_tile(H, W, offs_n, offs_v, row_ok, col_ok, D, stride_hn, stride_hd, stride_wv, stride_wd,
                         BLOCK_N, BLOCK_V, BLOCK_K, DOT_F32, IN_PREC)
        p = tl.where(col_ok[None, :], tl.exp(z - lse[:, None]), 0.0)
        dz = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
        if HAS_GLP:
            g_lp = tl.where(valid, tl.load(GLP + offs_n, mask=row_ok, other=0.0), 0.0)
            onehot = offs_v[None, :] == t[:, None]
            dz += g_lp[:, None] * (tl.where(onehot, 1.0, 0.0) - p)
        if HAS_GENT:
            g_ent = tl.where(valid, tl.load(GENT + offs_n, mask=row_ok, other=0.0), 0.0)
            dz -= g_ent[:, None] * p * (z - mean_z[:, None])
        dz_in = dz.to(H.dtype.element_ty)  # GEMM operand in the input dtype (bf16 tensor cores), fp32 accumulate
        if DOT_F32:
            dz_in = dz_in.to(tl.float32)

        offs_k = tl.arange(0, BLOCK_K)
        for k0 in range(0, D, BLOCK_K):
            kk = k0 + offs_k
            k_ok = kk < D
            if NEED_DH:
                w = tl.load(W + offs_v[:, None] * stride_wv + kk[None, :] * stride_wd,
                            mask=col_ok[:, None] & k_ok[None, :], other=0.0)
                if DOT_F32:
                    w = w.to(tl.float32)
                dh = tl.dot(dz_in, w, input_precision=IN_PREC)  # [BLOCK_N, BLOCK_K]
                tl.atomic_add(DH + offs_n[:, None] * D + kk[None, :], dh,
                              mask=row_ok[:, None] & k_ok[None, :], sem="relaxed")
            if NEED_DW:
                h = tl.load(H + offs_n[:, None] * stride_hn + kk[None, :] * stride_hd,
                            mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                if DOT_F32:
                    h = h.to(tl.float32)
                dw = tl.dot(tl.trans(dz_in), h, input_precision=IN_PREC)  # [BLOCK_V, BLOCK_K]
                tl.atomic_add(DW + offs_v[:, None] * D + kk[None, :], dw,
                              mask=col_ok[:, None] & k_ok[None, :], sem="relaxed")


def _input_precision(dtype: torch.dtype) -> str:
    """fp32 tl.dot precision: follow torch's TF32 switch for matmuls; irrelevant for bf16/fp16 operands."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _triton_args(hidden: torch.Tensor, weight: torch.Tensor) -> tuple:
    return (hidden.shape[0], weight.shape[0], hidden.shape[1],
            hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1))


class _TritonTokenLogps(torch.autograd.Function):
    """Triton forward/backward; saves H, W, targets and per-row (lse, E_p[z]) only."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, block_n, block_v, block_k, num_warps):
        n = hidden.shape[0]
        f32 = dict(dtype=torch.float32, device=hidden.device)
        logps, entropy, lse, mean_z = (torch.empty(n, **f32) for _ in range(4))
        interp = _interpreting()
        prec = _input_precision(hidden.dtype)
        grid = (triton.cdiv(n, block_n),)
        _token_logps_fwd_kernel[grid](
            hidden, weight, targets, logps, entropy, lse, mean_z, *_triton_args(hidden, weight), ignore_index,
            BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_K=block_k, DOT_F32=interp, IN_PREC=prec,
            num_warps=num_warps,
        )
        ctx.save_for_backward(hidden, weight, targets, lse, mean_z)
        ctx.cfg = (ignore_index, block_n, block_v, block_k, num_warps)
        ctx.set_materialize_grads(False)
        return logps, entropy

    @staticmethod
    def backward(ctx, grad_logps, grad_entropy):
        hidden, weight, targets, lse, mean_z = ctx.saved_tensors
        ignore_index, block_n, block_v, block_k, num_warps = ctx.cfg
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if (grad_logps is None and grad_entropy is None) or not (need_h or need_w):
            return (None,) * 8
        n, d = hidden.shape
        vocab = weight.shape[0]
        # fp32 accumulators: the kernel adds partial sums from many tiles into them
        d_h = torch.zeros(n, d, dtype=torch.float32, device=hidden.device) if need_h else lse
        d_w = torch.zeros(vocab, d, dtype=torch.float32, device=hidden.device) if need_w else lse
        g_lp = grad_logps.float().contiguous() if grad_logps is not None else lse
        g_ent = grad_entropy.float().contiguous() if grad_entropy is not None else lse
        grid = (triton.cdiv(n, block_n) * triton.cdiv(vocab, block_v),)
        _token_logps_bwd_kernel[grid](
            hidden, weight, targets, lse, mean_z, g_lp, g_ent, d_h, d_w, *_triton_args(hidden, weight), ignore_index,
            HAS_GLP=grad_logps is not None, HAS_GENT=grad_entropy is not None, NEED_DH=need_h, NEED_DW=need_w,
            BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_K=block_k, GROUP_N=8, DOT_F32=_interpreting(),
            IN_PREC=_input_precision(hidden.dtype), num_warps=num_warps,
        )
        grad_h = d_h.to(hidden.dtype) if need_h else None
        grad_w = d_w.to(weight.dtype) if need_w else None
        return grad_h, grad_w, None, None, None, None, None, None


def token_logps_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    block_n: int = 64,
    block_v: int = 128,
    block_k: int = 64,
    num_warps: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton path: same contract as :func:`token_logps_torch`.

    Needs CUDA tensors, or CPU tensors with ``TRITON_INTERPRET=1`` set before triton was imported. Block sizes
    must be powers of two (≥ 16 on GPU for ``tl.dot``); the defaults are untuned guesses for an H100-class GPU.
    Targets outside ``[0, V)`` (other than ignore_index) are not checked here and give a wrong logp silently.
    """
    if not HAS_TRITON:
        raise RuntimeError("backend 'triton' needs the triton package")
    _check_shapes(hidden, weight, targets)
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden and weight must share a dtype, got {hidden.dtype} and {weight.dtype}")
    if hidden.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"unsupported dtype {hidden.dtype}")
    if not hidden.is_cuda and not _interpreting():
        raise RuntimeError("backend 'triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before triton is "
                           "imported to run on CPU tensors")
    for size in (block_n, block_v, block_k):
        if size < 1 or size & (size - 1):
            raise ValueError("block sizes must be powers of two")
    return _TritonTokenLogps.apply(hidden, weight, targets.contiguous(), ignore_index, block_n, block_v, block_k,
                                   num_warps)


# --------------------------------------------------------------------------------------------------------------
# Dispatcher
# --------------------------------------------------------------------------------------------------------------

BACKENDS = ("torch", "triton", "reference")


def resolve_backend(hidden: torch.Tensor, backend: str | None = None) -> str:
    """The backend :func:`token_logps` would use: ``backend`` if given, else triton for CUDA tensors."""
    if backend is None:
        return "triton" if hidden.is_cuda and HAS_TRITON else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    return backend


def token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-prob of the target and entropy of ``softmax(hidden @ weight.T)``, fused.

    ``hidden [..., d]``, ``weight [V, d]``, integer ``targets [...]`` (``ignore_index`` = no target) →
    fp32 ``(logps, entropy)`` shaped like ``targets``, 0 and gradient-free at ignored positions; both are
    differentiable with respect to ``hidden`` and ``weight``. ``backend``: None (triton for CUDA tensors when
    triton imports, torch otherwise), ``"torch"``, ``"triton"`` (also CPU tensors under ``TRITON_INTERPRET=1``)
    or ``"reference"`` (full logits).
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree")
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_t = targets.reshape(-1)
    chosen = resolve_backend(hidden, backend)
    if chosen == "triton":
        logps, entropy = token_logps_triton(flat_h, weight, flat_t, ignore_index)
    elif chosen == "torch":
        logps, entropy = token_logps_torch(flat_h, weight, flat_t, ignore_index)
    else:
        logps, entropy = token_logps_reference(flat_h, weight, flat_t, ignore_index)
    return logps.reshape(targets.shape), entropy.reshape(targets.shape)
