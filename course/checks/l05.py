"""Checks for lesson 05 (spectral analysis: Lipschitz bounds layer by layer)."""
import math

import torch

from . import Hint, exercise


def _number(x) -> float:
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise Hint(f"return a single number (the norm), not a tensor of shape {tuple(x.shape)}.")
        x = x.item()
    return float(x)


@exercise("5.1", "the spectral norm of a dense layer",
          reference=("course.stability.spectral_norm", "course.stability.dense_bound"))
def _dense(fn):
    g = torch.Generator().manual_seed(5)
    for W in (torch.randn(30, 50, generator=g),
              torch.randn(40, 3, generator=g) @ torch.randn(3, 20, generator=g) + 0.1 * torch.randn(40, 20, generator=g)):
        got = _number(fn(W.clone()))
        want = torch.linalg.matrix_norm(W, 2).item()
        if math.isclose(got, want, rel_tol=1e-4):
            continue
        if math.isclose(got, torch.linalg.matrix_norm(W, "fro").item(), rel_tol=1e-4):
            raise Hint("that is the Frobenius norm, √(Σ σ_i²) over *all* singular values: an upper bound. "
                       "The layer can stretch a vector by at most its *largest* singular value.")
        if math.isclose(got, want ** 2, rel_tol=1e-4):
            raise Hint("that is the largest eigenvalue of WᵀW, which is σ_max²: take its square root.")
        if math.isclose(got, W.abs().max().item(), rel_tol=1e-6):
            raise Hint("the largest entry says little about how much W can stretch a vector. "
                       "‖W‖₂ = max over unit vectors x of ‖Wx‖.")
        raise Hint("‖W‖₂ = max over unit vectors x of ‖Wx‖ = the largest singular value of W "
                   "(torch.linalg.svdvals, or the square root of the largest eigenvalue of WᵀW).")


@exercise("5.2", "the Fourier bound of a circular 1-D convolution",
          reference=("course.stability.conv_operator_norm",))
def _conv1d(fn):
    cases = [(torch.tensor([0.5, -1.0, 0.25, 0.8]), 16), (torch.tensor([1.0, 2.0, -0.5]), 10)]
    for kernel, n in cases:
        got = _number(fn(kernel.clone(), n))
        want = torch.fft.fft(kernel, n=n).abs().max().item()
        if math.isclose(got, want, rel_tol=1e-5):
            continue
        if math.isclose(got, torch.fft.fft(kernel).abs().max().item(), rel_tol=1e-5):
            raise Hint("the convolution acts on signals of length n, so its gain must be read at all n "
                       "frequencies of the n-point DFT: zero-pad the kernel to length n before transforming.")
        if math.isclose(got, want / math.sqrt(n), rel_tol=1e-5):
            raise Hint("mind the DFT's normalisation: with y = k ⊛ x, the convolution theorem ŷ = k̂ · x̂ holds "
                       "for the plain (unnormalised) DFT of the kernel — torch's default norm.")
        if math.isclose(got, kernel.abs().sum().item(), rel_tol=1e-5):
            raise Hint("Σ|k_j| (Young's inequality) bounds the norm, but it is not tight. The exact norm is "
                       "the largest gain |k̂(ξ)| over the frequencies ξ.")
        raise Hint("the circular convolution is diagonal in the Fourier basis, with gains |k̂(ξ)| "
                   "(the n-point DFT of the zero-padded kernel): its norm is the largest gain.")
