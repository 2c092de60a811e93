"""Random streams: Philox4x32-10 known answers, reproducibility from the seed, state updates,
distributions, Theano's RandomStreams / MRG_RandomStreams APIs."""
import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.sandbox.rng_mrg import MRG_RandomStreams
from graphc.tensor.random import philox
from graphc.tensor.shared_randomstreams import RandomStreams

KAT = [  # Random123 kat_vectors: counter, key, Philox4x32-10 output
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr, key, expected", KAT)
def test_philox_known_answers(ctr, key, expected):
    out = philox.philox4x32(*[[c] for c in ctr], *key)
    assert tuple(int(o[0]) for o in out) == expected


def test_counter_blocks_and_carry():
    state = np.array([1, 2, 0xFFFFFFFF, 0xFFFFFFFF, 7, 3], dtype=np.uint32)
    words = philox.random_words(state, 8)
    # block 1 is counter (0, 0, 8, 3): the 96-bit counter carried into c2
    np.testing.assert_array_equal(words[4:], np.array(philox.philox4x32(
        [0], [0], [8], [3], 1, 2)).reshape(-1))
    np.testing.assert_array_equal(philox.advance(state, 2), [1, 2, 1, 0, 8, 3])


def test_uniform_conversion_is_exact_and_open():
    w = np.array([0, 0xFFFFFFFF], dtype=np.uint32)
    u32 = philox.uniform_from_words(w, "float32")
    assert u32.dtype == np.float32 and u32[0] == 2.0 ** -24 and u32[1] == 1 - 2.0 ** -24
    u64 = philox.uniform_from_words(np.array([0, 0, 0xFFFFFFFF, 0xFFFFFFFF], np.uint32),
                                    "float64")
    assert u64[0] == 2.0 ** -53 and u64[1] == 1 - 2.0 ** -53
    u16 = philox.uniform_from_words(w, "float16")
    assert 0 < u16[0] and u16[1] < 1


def test_pinned_stream_values():
    """The exact numbers of a seed: changing them breaks every user's reproducibility."""
    w = philox.random_words(philox.seed_state(1234, 0), 3)
    assert [int(x) for x in w] == [0x2090B348, 0xDA7CF0AB, 0x4401906F]
    _, u = philox.uniform(philox.seed_state(1234, 0), (3,), "float32")
    np.testing.assert_array_equal(u, ((w >> 9).astype(np.float32) + 0.5) * 2.0 ** -23)
    _, d = philox.uniform(philox.seed_state(1234, 1), (2,), "float64")
    assert d.tolist() == [0.892345504832691, 0.6044706345698837]


def test_same_seed_same_numbers_and_state_advances():
    def draws(seed):
        srng = RandomStreams(seed)
        f = graphc.function([], [srng.uniform((3,)), srng.normal((2, 2))])
        return [f() for _ in range(2)]
    a, b = draws(42), draws(42)
    for x, y in zip(a, b):
        for p, q in zip(x, y):
            np.testing.assert_array_equal(p, q)
    assert not np.allclose(a[0][0], a[1][0])          # the second call continues the stream
    assert not np.allclose(draws(43)[0][0], a[0][0])


def test_second_call_continues_the_stream():
    srng = RandomStreams(5)
    f = graphc.function([], srng.uniform((8,), dtype="float32"))
    first, second = f(), f()
    state = philox.seed_state(5, 0)
    _, both = philox.uniform(state, (16,), "float32")
    np.testing.assert_array_equal(np.concatenate([first, second]), both)


def test_seed_and_no_default_updates():
    srng = RandomStreams(1)
    u = srng.uniform((4,))
    f = graphc.function([], u)
    g = graphc.function([], u, no_default_updates=True)
    x0 = f()
    np.testing.assert_array_equal(g(), g())
    srng.seed(1)
    np.testing.assert_array_equal(f(), x0)
    assert len(srng.updates()) == 1


def test_distributions_statistics():
    srng = RandomStreams(2024)
    n = 20000
    f = graphc.function([], [srng.uniform((n,), low=-1, high=3), srng.normal((n,), avg=2, std=3),
                             srng.binomial((n,), n=5, p=0.3), srng.random_integers((n,), 1, 6),
                             srng.choice((n,), a=3, p=[0.2, 0.0, 0.8])])
    u, z, bnm, ints, ch = f()
    assert -1 < u.min() and u.max() < 3 and abs(u.mean() - 1) < 0.05
    assert abs(z.mean() - 2) < 0.1 and abs(z.std() - 3) < 0.1
    assert bnm.dtype == np.int64 and abs(bnm.mean() - 1.5) < 0.05 and bnm.max() <= 5
    assert set(np.unique(ints)) == {1, 2, 3, 4, 5, 6}
    assert 1 not in ch and abs((ch == 2).mean() - 0.8) < 0.02


def test_dropout_mask_with_symbolic_shape():
    srng = RandomStreams(9)
    x = T.matrix("x")
    mask = srng.binomial(size=x.shape, p=0.5, dtype=graphc.config.floatX)
    f = graphc.function([x], x * mask)
    v = f(np.ones((30, 40)))
    assert v.shape == (30, 40) and set(np.unique(v)) == {0.0, 1.0}
    assert abs(v.mean() - 0.5) < 0.05
    assert f(np.ones((2, 3))).shape == (2, 3)


def test_permutation_choice_multinomial():
    srng = RandomStreams(11)
    perm = graphc.function([], srng.permutation(size=(3,), n=6))()
    assert perm.shape == (3, 6)
    for row in perm:
        assert sorted(row) == list(range(6))
    c = graphc.function([], srng.choice(size=(2, 3), a=np.arange(10, 20), replace=False))()
    assert c.shape == (2, 3) and len(set(c.ravel())) == 6 and c.min() >= 10
    w = graphc.function([], srng.choice(size=(2,), a=4, replace=False, p=[0.5, 0.5, 0, 0]))()
    assert sorted(w) == [0, 1]
    m = graphc.function([], srng.multinomial(n=50, pvals=[[0.1, 0.9], [1.0, 0.0]]))()
    np.testing.assert_array_equal(m.sum(1), [50, 50])
    assert m[1, 0] == 50
    rows = graphc.function([], srng.shuffle_row_elements(T.constant(np.arange(5.0))))()
    assert sorted(rows) == list(range(5))


def test_reparameterized_gradient():
    srng = RandomStreams(3)
    mu, log_sigma = T.vector("mu"), T.vector("log_sigma")
    z = srng.normal(avg=mu, std=T.exp(log_sigma))
    g_mu, g_ls = graphc.grad(z.sum(), [mu, log_sigma])
    f = graphc.function([mu, log_sigma], [z, g_mu, g_ls], no_default_updates=True)
    zv, gm, gl = f(np.zeros(4), np.zeros(4))
    np.testing.assert_array_equal(gm, np.ones(4))
    np.testing.assert_allclose(gl, zv)          # dz/dlog_sigma = sigma * eps = z - mu


def test_float32_streams():
    srng = RandomStreams(0)
    with graphc.config.change_flags(floatX="float32"):
        u = srng.uniform((5,))
        z = srng.normal((5,))
    assert u.dtype == "float32" and z.dtype == "float32"
    out = graphc.function([], [u, z])()
    assert out[0].dtype == np.float32 and out[1].dtype == np.float32


def test_mrg_random_streams_api():
    srng = MRG_RandomStreams(seed=[1, 2, 3, 4, 5, 6])
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    f = graphc.function([], [srng.uniform((3,)), srng.normal((3,), truncate=True),
                             srng.truncated_normal((4000,)), srng.binomial((3,), p=0.5),
                             srng.multinomial(pvals=p), srng.choice(size=2, replace=False, p=p)])
    u, zt, tn, b, m, ch = f()
    assert abs(zt).max() <= 2 and abs(tn).max() <= 2 / 0.87962566103423978 + 1e-9
    assert abs(tn.std() - 1) < 0.06
    np.testing.assert_array_equal(m.sum(1), [1, 1])
    assert ch.shape == (2, 2) and all(len(set(r)) == 2 for r in ch)
    with pytest.raises(NotImplementedError):
        srng.choice(size=2, p=p)
    srng.seed(7)
    again = MRG_RandomStreams(seed=7)
    g = graphc.function([], again.uniform((3,)))
    assert not np.allclose(g(), u)


def test_bad_sizes():
    srng = RandomStreams(0)
    with pytest.raises(ValueError, match="ndim"):
        srng.uniform(size=T.lvector("s"))
    with pytest.raises(TypeError, match="Python int"):
        srng.binomial((2,), n=T.iscalar("n"))
