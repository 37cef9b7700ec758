"""Cayley rotations (ALIFE's ``models/cayley_rot.py``): identity, orthogonality, skew-symmetry, structure, sizes."""

import pytest
import torch

from incseg_cli.models.rotations import CayleyRotations, cayley, cayley_apply, num_params, skew_matrices

D = 256


def _params(scale: float, classes: int = 4, dim: int = D, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(classes, num_params(dim), generator=g, dtype=torch.float64) * 2 - 1) * scale).to(dtype)


def test_identity_at_zero():
    r = cayley(torch.zeros(3, num_params(D)), D)
    assert torch.equal(r, torch.eye(D).expand(3, D, D))
    x = torch.randn(3, 5, D)
    assert torch.equal(cayley_apply(torch.zeros(3, num_params(D)), D, x), x)
    assert torch.equal(CayleyRotations(2, 8, init="identity").matrices(), torch.eye(8).expand(2, 8, 8))


@pytest.mark.parametrize("scale", [1 / num_params(D) ** 0.5, 1.0])
def test_orthogonal_with_determinant_one(scale):
    r = cayley(_params(scale), D)
    eye = torch.eye(D)
    assert (r @ r.transpose(1, 2) - eye).abs().max() < 1e-5
    assert (r.transpose(1, 2) @ r - eye).abs().max() < 1e-5
    assert torch.allclose(torch.linalg.det(r.double()), torch.ones(4, dtype=torch.float64), atol=1e-4)
    r64 = cayley(_params(scale, dtype=torch.float64), D)
    assert (r64 @ r64.transpose(1, 2) - torch.eye(D, dtype=torch.float64)).abs().max() < 1e-13


def test_skew_matrix_from_the_upper_triangle():
    dim = 5
    u = torch.arange(1.0, num_params(dim) + 1).unsqueeze(0)
    s = skew_matrices(u, dim)[0]
    assert torch.equal(s.T, -s)
    rows, cols = torch.triu_indices(dim, dim, offset=1)
    assert torch.equal(s[rows, cols], 0.5 * u[0])  # row-major triu order, S = ½(U − Uᵀ)
    assert torch.equal(s.diagonal(), torch.zeros(dim))


def test_gradient_flows_only_into_u_and_matches_finite_differences():
    dim = 6
    u = _params(0.3, classes=2, dim=dim, dtype=torch.float64).requires_grad_()
    x = torch.randn(2, 3, dim, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: cayley_apply(p, dim, x), (u,))
    assert torch.autograd.gradcheck(lambda p: cayley(p, dim), (u,))
    module = CayleyRotations(3, dim)
    assert [name for name, _ in module.named_parameters()] == ["params"]
    module(torch.randn(3, dim)).sum().backward()
    assert module.params.grad.shape == (3, num_params(dim))


def test_structure_preserved():
    u = _params(1.0, classes=2)
    x = torch.rand(2, 7, D)
    y = cayley_apply(u, D, x)
    assert torch.allclose(y.norm(dim=2), x.norm(dim=2), rtol=1e-5)
    cos_x = torch.nn.functional.cosine_similarity(x[:, :1], x[:, 1:], dim=2)
    cos_y = torch.nn.functional.cosine_similarity(y[:, :1], y[:, 1:], dim=2)
    assert torch.allclose(cos_x, cos_y, atol=1e-5)
    r = cayley(u, D)
    assert torch.allclose(y, (r @ x.transpose(1, 2)).transpose(1, 2), atol=1e-4)
    one = cayley_apply(u, D, x[:, 0])
    assert torch.allclose(one, y[:, 0], atol=1e-5)


def test_factors_commute_and_batched_equals_per_class_inverse():
    u = _params(0.5, classes=3, dtype=torch.float64)
    s = skew_matrices(u, D)
    eye = torch.eye(D, dtype=torch.float64)
    for c in range(3):
        explicit = (eye - s[c]) @ torch.inverse(eye + s[c])
        assert torch.allclose(explicit, torch.inverse(eye + s[c]) @ (eye - s[c]), atol=1e-12)
        assert torch.allclose(cayley(u, D)[c], explicit, atol=1e-12)


def test_sizes_and_init_scale():
    assert num_params(256) == 32640
    voc_15_5 = CayleyRotations(16, 256, generator=torch.Generator().manual_seed(0))
    assert voc_15_5.params.numel() == 16 * 32640
    bound = 1 / 32640 ** 0.5
    assert voc_15_5.params.abs().max() <= bound and voc_15_5.params.abs().max() > 0.9 * bound
    again = CayleyRotations(16, 256, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.params, voc_15_5.params)
    with pytest.raises(ValueError):
        cayley(torch.zeros(1, 10), D)
