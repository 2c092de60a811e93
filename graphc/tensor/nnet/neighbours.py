"""``images2neibs`` / ``neibs2images`` (Theano's ``theano.tensor.nnet.neighbours``).

    Images2Neibs(ten4)              -> (B*C*grid_r*grid_c, nr*nc) matrix of patches
    Neibs2Images(neibs, shape4)     -> (B, C, H, W): the adjoint (each patch cell added back)

Row order is (batch, channel, patch row, patch col), each row the flattened patch.  Modes
(Theano 1.0): 'valid' (patches must tile exactly: (H - nr) % step == 0), 'ignore_borders'
(incomplete patches dropped), 'half' / 'full' ('valid' on the input zero-padded by nr // 2 /
nr - 1 per side), 'wrap_centered' (odd patches centred on every step-th cell, wrapping
around the edges).

Both directions use one index map per spatial dim (grid, patch) -> source row/col, with one
extra zero row/col standing for padding; the gather is one fancy-indexing copy and the
scatter nr*nc vectorized adds.  The two ops are each other's gradient in every mode (Theano
had gradients only for 'valid' and 'ignore_borders').
"""
from __future__ import annotations

import numpy as np

from graphc.graph.basic import Apply, Constant, Op, Variable
from graphc.tensor.basic import as_shape_vector, static_values
from graphc.tensor.elemwise import describe_values, shape_error
from graphc.tensor.type import TensorType
from graphc.tensor.var import as_tensor_variable

MODES = ("valid", "ignore_borders", "half", "full", "wrap_centered")


def _ints2(v, name):
    if isinstance(v, Variable):
        if not isinstance(v, Constant):
            raise TypeError(f"images2neibs: graphc needs {name} as ints, got the symbolic {v}")
        v = np.asarray(v.data).tolist()
    v = tuple(int(a) for a in v)
    if len(v) != 2 or min(v) <= 0:
        raise ValueError(f"images2neibs: {name} must be 2 positive ints, got {v}")
    return v


def grid_len(n, k, step, mode):
    """Number of patches along one dim (ints or symbolic int64 scalars)."""
    if mode in ("valid", "ignore_borders"):
        return 1 + (n - k) // step
    if mode == "half":
        return 1 + (n - k % 2) // step
    if mode == "full":
        return 1 + (n + k - 2) // step
    return (n + step - 1) // step                       # wrap_centered: ceil(n / step)


def _shift(k, mode):
    return {"half": k // 2, "wrap_centered": k // 2, "full": k - 1}.get(mode, 0)


class NeibsBase(Op):
    __props__ = ("mode", "neib_shape", "neib_step")

    def __init__(self, mode="valid", neib_shape=(2, 2), neib_step=None):
        if mode not in MODES:
            raise NotImplementedError(f"images2neibs: only modes {', '.join(MODES)} are "
                                      f"implemented, got {mode!r}")
        self.mode = mode
        self.neib_shape = _ints2(neib_shape, "neib_shape")
        self.neib_step = self.neib_shape if neib_step is None else _ints2(neib_step, "neib_step")

    def __str__(self):
        return (f"{type(self).__name__}{{{self.mode}, shape={self.neib_shape}, "
                f"step={self.neib_step}}}")

    def _index_maps(self, node, hw, values):
        """Per spatial dim, a (grid, k) array of source positions; position n is padding."""
        maps = []
        for d, (n, k, s) in enumerate(zip(hw, self.neib_shape, self.neib_step)):
            why = None
            if self.mode == "wrap_centered":
                if k % 2 != 1:
                    why = "mode wrap_centered needs patches with odd shapes"
                elif n < k:
                    why = "mode wrap_centered needs images at least as large as the patches"
            elif self.mode != "ignore_borders" and (
                    n < k or (n - k + 2 * _shift(k, self.mode)) % s != 0):
                why = (f"neib_shape[{d}]={k}, neib_step[{d}]={s} and the image size {n} are not "
                       f"consistent for mode {self.mode!r} (the patches must tile the image)")
            elif n < k:
                why = f"the image size {n} is smaller than the patch size {k}"
            if why:
                raise shape_error(self, describe_values(values), why,
                                  getattr(node.tag, "trace", []))
            grid = grid_len(n, k, s, self.mode)
            idx = np.arange(grid)[:, None] * s + np.arange(k)[None, :] - _shift(k, self.mode)
            if self.mode == "wrap_centered":
                idx %= n
            else:
                idx[(idx < 0) | (idx >= n)] = n
            maps.append(idx)
        return maps

    def _static_rows(self, shape4):
        if any(s is None for s in shape4):
            return None
        b, c, h, w = shape4
        (kr, kc), (sr, sc) = self.neib_shape, self.neib_step
        return b * c * grid_len(h, kr, sr, self.mode) * grid_len(w, kc, sc, self.mode)


class Images2Neibs(NeibsBase):
    def make_node(self, ten4):
        ten4 = as_tensor_variable(ten4)
        if ten4.ndim != 4:
            raise TypeError(f"{self}: the input must be a 4-d tensor, got {ten4.type}")
        rows = self._static_rows(ten4.type.shape)
        cols = self.neib_shape[0] * self.neib_shape[1]
        return Apply(self, [ten4], [TensorType(ten4.dtype, shape=(rows, cols))()])

    def perform(self, node, inputs, output_storage):
        (x,) = inputs
        rmap, cmap = self._index_maps(node, x.shape[2:], inputs)
        xp = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))   # the padding cell
        patches = xp[:, :, rmap[:, None, :, None], cmap[None, :, None, :]]
        output_storage[0][0] = patches.reshape(-1, self.neib_shape[0] * self.neib_shape[1])

    def infer_shape(self, node, shapes):
        b, c, h, w = shapes[0]
        (kr, kc), (sr, sc) = self.neib_shape, self.neib_step
        rows = b * c * grid_len(h, kr, sr, self.mode) * grid_len(w, kc, sc, self.mode)
        return [(rows, as_tensor_variable(np.int64(kr * kc)))]

    def L_op(self, inputs, outputs, output_grads):
        (x,) = inputs
        return [Neibs2Images(self.mode, self.neib_shape, self.neib_step)(
            output_grads[0], x.shape)]


class Neibs2Images(NeibsBase):
    """Add every patch row back into an image of shape ``shape4`` (cells covered by several
    patches receive the sum; cells covered by none are zero)."""

    def make_node(self, neibs, shape4):
        neibs = as_tensor_variable(neibs)
        shape4 = as_shape_vector(list(shape4) if isinstance(shape4, (tuple, list)) else shape4)
        if neibs.ndim != 2:
            raise TypeError(f"{self}: neibs must be a matrix, got {neibs.type}")
        if shape4.type.shape[0] not in (None, 4):
            raise TypeError(f"{self}: the image shape must have 4 entries, got {shape4.type}")
        static = static_values(shape4) or [None] * 4
        return Apply(self, [neibs, shape4], [TensorType(neibs.dtype, shape=tuple(static))()])

    def perform(self, node, inputs, output_storage):
        neibs, shape4 = inputs
        b, c, h, w = (int(s) for s in shape4)
        rmap, cmap = self._index_maps(node, (h, w), inputs)
        kr, kc = self.neib_shape
        want = (b * c * rmap.shape[0] * cmap.shape[0], kr * kc)
        if neibs.shape != want:
            raise shape_error(self, describe_values(inputs),
                              f"neibs has shape {neibs.shape}; images of shape {(b, c, h, w)} "
                              f"give {want}", getattr(node.tag, "trace", []))
        g = neibs.reshape(b, c, rmap.shape[0], cmap.shape[0], kr, kc)
        out = np.zeros((b, c, h + 1, w + 1), dtype=neibs.dtype)
        for i in range(kr):
            for j in range(kc):
                # within one patch offset the (row, col) targets are distinct, except the
                # padding cell, which is dropped below
                out[:, :, rmap[:, i][:, None], cmap[:, j][None, :]] += g[:, :, :, :, i, j]
        output_storage[0][0] = np.ascontiguousarray(out[:, :, :h, :w])

    def infer_shape(self, node, shapes):
        shape4 = node.inputs[1]
        return [tuple(shape4[i] for i in range(4))]

    def L_op(self, inputs, outputs, output_grads):
        from graphc.gradient import disconnected_grad_type
        return [Images2Neibs(self.mode, self.neib_shape, self.neib_step)(output_grads[0]),
                disconnected_grad_type()]

    def connection_pattern(self, node):
        return [[True], [False]]


def images2neibs(ten4, neib_shape, neib_step=None, mode="valid"):
    """Patches of the last two dims of ``ten4`` as the rows of a matrix (Theano 1.0)."""
    return Images2Neibs(mode, neib_shape, neib_step)(ten4)


def neibs2images(neibs, neib_shape, original_shape, mode="valid"):
    """The inverse of images2neibs for non-overlapping patches (Theano 1.0): ``mode`` is
    'valid' or 'ignore_borders' (uncovered border cells become 0)."""
    if mode not in ("valid", "ignore_borders"):
        raise NotImplementedError(f"neibs2images does not support mode={mode!r}")
    return Neibs2Images(mode, neib_shape, None)(neibs, original_shape)
