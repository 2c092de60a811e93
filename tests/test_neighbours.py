"""images2neibs / neibs2images against Theano's reference loop, with gradients."""
import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.gradient import verify_grad
from graphc.tensor.elemwise import ShapeError
from graphc.tensor.nnet.neighbours import images2neibs, neibs2images


def ref_images2neibs(x, shape, step, mode):
    """Theano's Images2Neibs.perform, cell by cell."""
    (c, d), (sx, sy) = shape, step
    h, w = x.shape[2:]
    grids = {"valid": (1 + (h - c) // sx, 1 + (w - d) // sy),
             "ignore_borders": (1 + (h - c) // sx, 1 + (w - d) // sy),
             "half": (1 + (h - c % 2) // sx, 1 + (w - d % 2) // sy),
             "full": (1 + (h + c - 2) // sx, 1 + (w + d - 2) // sy),
             "wrap_centered": (-(-h // sx), -(-w // sy))}
    gc, gd = grids[mode]
    shift = {"half": (c // 2, d // 2), "wrap_centered": (c // 2, d // 2),
             "full": (c - 1, d - 1)}.get(mode, (0, 0))
    z = np.zeros((x.shape[0] * x.shape[1] * gc * gd, c * d))
    for n, s, a, b in np.ndindex(x.shape[0], x.shape[1], gc, gd):
        row = b + gd * (a + gc * (s + x.shape[1] * n))
        for i, j in np.ndindex(c, d):
            r, q = i + a * sx - shift[0], j + b * sy - shift[1]
            if mode == "wrap_centered":
                r, q = r % h, q % w
            if 0 <= r < h and 0 <= q < w:
                z[row, j + d * i] = x[n, s, r, q]
    return z


CASES = [("valid", (2, 3), None, (6, 6)), ("valid", (3, 2), (1, 2), (5, 6)),
         ("ignore_borders", (2, 3), (2, 2), (7, 8)), ("half", (3, 2), (1, 1), (5, 4)),
         ("full", (2, 3), (1, 2), (4, 5)), ("wrap_centered", (3, 3), (2, 1), (5, 4))]


@pytest.mark.parametrize("mode,shape,step,hw", CASES)
def test_matches_theano_reference_and_grad(mode, shape, step, hw, rng):
    xv = rng.standard_normal((2, 3) + hw)
    x = T.tensor4("x")
    out = images2neibs(x, shape, step, mode=mode)
    got = graphc.function([x], out)(xv)
    np.testing.assert_array_equal(got, ref_images2neibs(xv, shape, step or shape, mode))
    node = out.owner
    sym = node.op.infer_shape(node, [tuple(T.shape_i(x, d) for d in range(4))])[0]
    assert tuple(graphc.function([x], T.stack(list(sym)))(xv)) == got.shape
    verify_grad(lambda a: images2neibs(a, shape, step, mode=mode), [xv[:1, :2]],
                rng=np.random.default_rng(0), n_tests=1)


@pytest.mark.parametrize("mode", ["valid", "ignore_borders"])
def test_neibs2images_inverts(mode, rng):
    hw = (6, 4) if mode == "valid" else (7, 5)
    xv = rng.standard_normal((2, 3) + hw)
    x = T.tensor4("x")
    back = neibs2images(images2neibs(x, (2, 2), mode=mode), (2, 2), x.shape, mode=mode)
    want = xv.copy()
    if mode == "ignore_borders":
        want[:, :, 6:, :] = 0
        want[:, :, :, 4:] = 0
    np.testing.assert_array_equal(graphc.function([x], back)(xv), want)


def test_errors(rng):
    x = T.tensor4("x")
    f = graphc.function([x], images2neibs(x, (2, 2)))
    with pytest.raises(ShapeError, match="not consistent"):
        f(rng.standard_normal((1, 1, 5, 4)))
    g = graphc.function([x], images2neibs(x, (2, 3), mode="wrap_centered"))
    with pytest.raises(ShapeError, match="odd"):
        g(rng.standard_normal((1, 1, 5, 4)))
    with pytest.raises(NotImplementedError):
        images2neibs(x, (2, 2), mode="same")
    with pytest.raises(NotImplementedError):
        neibs2images(T.matrix(), (2, 2), x.shape, mode="half")
