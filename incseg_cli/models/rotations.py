"""Per-class Cayley rotations of ALIFE's feature memory (ALIFE's ``models/cayley_rot.py``).

Class c has a parameter vector u_c of the D(D−1)/2 strictly-upper-triangular entries of
U_c (row-major ``triu_indices`` order); S_c = ½(U_c − U_cᵀ) is skew-symmetric and
R_c = (I − S_c)(I + S_c)⁻¹ = (I + S_c)⁻¹(I − S_c) is orthogonal with det +1 (u = 0 gives
R = I).

Every class goes through ONE batched ``torch.linalg.solve`` with A_c = I + S_c, and no
explicit inverse (the official code calls ``torch.inverse`` per class). Since Sᵀ = −S,
I − S = Aᵀ: only A is built, with a single scatter. Rotating vectors never needs R itself:
R x = A⁻¹(Aᵀx) is one LU factorisation per class and a solve against the vectors.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn


def num_params(dim: int) -> int:
    return dim * (dim - 1) // 2


@lru_cache(maxsize=8)
def _flat_indices(dim: int, device: str) -> torch.Tensor:
    """Flat positions of the upper triangle (row-major, as u is stored) then of its mirror."""
    rows, cols = torch.triu_indices(dim, dim, offset=1)
    return torch.cat([rows * dim + cols, cols * dim + rows]).to(device)


def cayley_factor(u: torch.Tensor, dim: int) -> torch.Tensor:
    """A = I + S = I + ½(U − Uᵀ), ``[C, D, D]``, from ``u [C, D(D−1)/2]``."""
    if u.shape[-1] != num_params(dim):
        raise ValueError(f"rotation parameters of size {u.shape[-1]} do not fit D = {dim}")
    half = 0.5 * u
    eye = torch.eye(dim, dtype=u.dtype, device=u.device).reshape(1, dim * dim).expand(u.shape[0], -1)
    index = _flat_indices(dim, str(u.device)).expand(u.shape[0], -1)
    return eye.scatter(1, index, torch.cat([half, -half], dim=1)).view(-1, dim, dim)


def skew_matrices(u: torch.Tensor, dim: int) -> torch.Tensor:
    """S = ½(U − Uᵀ), ``[C, D, D]``."""
    return cayley_factor(u, dim) - torch.eye(dim, dtype=u.dtype, device=u.device)


def cayley(u: torch.Tensor, dim: int) -> torch.Tensor:
    """R = (I + S)⁻¹(I − S) = A⁻¹Aᵀ for every class at once: ``[C, D, D]``."""
    with torch.autocast(u.device.type, enabled=False):  # see cayley_apply
        a = cayley_factor(u, dim)
        return torch.linalg.solve(a, a.transpose(1, 2))


def cayley_apply(u: torch.Tensor, dim: int, x: torch.Tensor) -> torch.Tensor:
    """R_c x for ``x [C, D]`` (one vector per class) or ``[C, N, D]`` (vectors as rows), in
    the parameters' dtype whatever autocast is on: CUDA's autocast would run the ``bmm`` in
    half precision and leave ``linalg.solve`` to refuse the mixed dtypes, and an orthogonal
    R needs the solve in full precision anyway."""
    with torch.autocast(u.device.type, enabled=False):
        a = cayley_factor(u, dim)
        single = x.dim() == 2
        cols = (x.unsqueeze(1) if single else x).transpose(1, 2).to(u.dtype)  # [C, D, N]
        out = torch.linalg.solve(a, torch.bmm(a.transpose(1, 2), cols)).transpose(1, 2)
        return out.squeeze(1) if single else out


class CayleyRotations(nn.Module):
    """One rotation per class; ``params[c]`` is u_c. ``init="default"`` is the official
    init (PyTorch's conv default, U(±1/√(D(D−1)/2)): random rotations close to I);
    ``"identity"`` starts every R_c at I."""

    def __init__(self, num_classes: int, dim: int, init: str = "default",
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.params = nn.Parameter(torch.zeros(num_classes, num_params(dim)))
        if init == "default":
            bound = 1.0 / math.sqrt(num_params(dim))
            with torch.no_grad():
                self.params.uniform_(-bound, bound, generator=generator)
        elif init != "identity":
            raise ValueError(f"unknown rotation init {init!r}; use default or identity")

    @property
    def num_classes(self) -> int:
        return self.params.shape[0]

    def matrices(self) -> torch.Tensor:
        return cayley(self.params, self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x [C, D]`` (one vector per class) or ``[C, N, D]`` (N per class)."""
        return cayley_apply(self.params, self.dim, x)
