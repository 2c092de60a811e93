"""Classic Theano programs, written as in the deeplearning.net tutorials (logistic_sgd.py,
mlp.py, dA.py), running unchanged on ``import graphc as theano; import graphc.tensor as T``
and trained for a few epochs on real digits ($GRAPHC_DATA: MNIST 5k, scikit-learn 8x8).
Each asserts a result well beyond chance, so a wrong gradient, update or op fails it."""
import numpy
import pytest

import graphc as theano
import graphc.tensor as T
from graphc import datasets
from graphc.tensor.shared_randomstreams import RandomStreams


# --------------------------------------------------------------------------- logistic_sgd.py
class LogisticRegression(object):
    """Multi-class logistic regression (the tutorial's class, unchanged)."""

    def __init__(self, input, n_in, n_out):
        self.W = theano.shared(
            value=numpy.zeros((n_in, n_out), dtype=theano.config.floatX), name='W', borrow=True)
        self.b = theano.shared(
            value=numpy.zeros((n_out,), dtype=theano.config.floatX), name='b', borrow=True)
        self.p_y_given_x = T.nnet.softmax(T.dot(input, self.W) + self.b)
        self.y_pred = T.argmax(self.p_y_given_x, axis=1)
        self.params = [self.W, self.b]
        self.input = input

    def negative_log_likelihood(self, y):
        return -T.mean(T.log(self.p_y_given_x)[T.arange(y.shape[0]), y])

    def errors(self, y):
        if y.ndim != self.y_pred.ndim:
            raise TypeError('y should have the same shape as self.y_pred',
                            ('y', y.type, 'y_pred', self.y_pred.type))
        if y.dtype.startswith('int'):
            return T.mean(T.neq(self.y_pred, y))
        else:
            raise NotImplementedError()


def shared_dataset(data_xy, borrow=True):
    """Keep a data set in shared variables (the tutorial's GPU idiom): labels are stored
    as floatX and cast back to int32 symbolically."""
    data_x, data_y = data_xy
    shared_x = theano.shared(numpy.asarray(data_x, dtype=theano.config.floatX), borrow=borrow)
    shared_y = theano.shared(numpy.asarray(data_y, dtype=theano.config.floatX), borrow=borrow)
    return shared_x, T.cast(shared_y, 'int32')


def load_data(name, sizes):
    """[(train_x, train_y), (valid_x, valid_y), (test_x, test_y)] as shared variables."""
    x, y = datasets.load_mnist_5k(flatten=True) if name == 'mnist' else \
        datasets.load_digits(flatten=True)
    parts = datasets.shuffled_split(x, y, sizes, seed=0)
    return [shared_dataset(p) for p in parts]


def sgd_optimization(learning_rate=0.13, n_epochs=4, batch_size=100):
    datasets_ = load_data('mnist', (3000, 500, 1000))
    train_set_x, train_set_y = datasets_[0]
    valid_set_x, valid_set_y = datasets_[1]
    test_set_x, test_set_y = datasets_[2]
    n_train_batches = train_set_x.get_value(borrow=True).shape[0] // batch_size
    n_valid_batches = valid_set_x.get_value(borrow=True).shape[0] // batch_size
    n_test_batches = test_set_x.get_value(borrow=True).shape[0] // batch_size

    index = T.lscalar()
    x = T.matrix('x')
    y = T.ivector('y')
    classifier = LogisticRegression(input=x, n_in=28 * 28, n_out=10)
    cost = classifier.negative_log_likelihood(y)
    test_model = theano.function(
        inputs=[index], outputs=classifier.errors(y),
        givens={x: test_set_x[index * batch_size: (index + 1) * batch_size],
                y: test_set_y[index * batch_size: (index + 1) * batch_size]})
    validate_model = theano.function(
        inputs=[index], outputs=classifier.errors(y),
        givens={x: valid_set_x[index * batch_size: (index + 1) * batch_size],
                y: valid_set_y[index * batch_size: (index + 1) * batch_size]})
    g_W = T.grad(cost=cost, wrt=classifier.W)
    g_b = T.grad(cost=cost, wrt=classifier.b)
    updates = [(classifier.W, classifier.W - learning_rate * g_W),
               (classifier.b, classifier.b - learning_rate * g_b)]
    train_model = theano.function(
        inputs=[index], outputs=cost, updates=updates,
        givens={x: train_set_x[index * batch_size: (index + 1) * batch_size],
                y: train_set_y[index * batch_size: (index + 1) * batch_size]})

    valid_errors, costs = [], []
    for epoch in range(n_epochs):
        costs.append(numpy.mean([train_model(i) for i in range(n_train_batches)]))
        valid_errors.append(numpy.mean([validate_model(i) for i in range(n_valid_batches)]))
    test_score = numpy.mean([test_model(i) for i in range(n_test_batches)])
    return classifier, costs, valid_errors, test_score


def test_logistic_regression_sgd_on_mnist_float32():
    with theano.config.change_flags(floatX='float32'):
        classifier, costs, valid_errors, test_score = sgd_optimization()
    assert classifier.W.get_value().dtype == numpy.float32     # no silent float64 upcast
    assert costs[-1] < costs[0] < numpy.log(10)
    assert valid_errors[-1] <= valid_errors[0]
    assert test_score < 0.2, test_score                         # chance: 0.9


# --------------------------------------------------------------------------- mlp.py
class HiddenLayer(object):
    def __init__(self, rng, input, n_in, n_out, W=None, b=None, activation=T.tanh):
        self.input = input
        if W is None:
            W_values = numpy.asarray(
                rng.uniform(low=-numpy.sqrt(6. / (n_in + n_out)),
                            high=numpy.sqrt(6. / (n_in + n_out)), size=(n_in, n_out)),
                dtype=theano.config.floatX)
            if activation == theano.tensor.nnet.sigmoid:
                W_values *= 4
            W = theano.shared(value=W_values, name='W', borrow=True)
        if b is None:
            b_values = numpy.zeros((n_out,), dtype=theano.config.floatX)
            b = theano.shared(value=b_values, name='b', borrow=True)
        self.W = W
        self.b = b
        lin_output = T.dot(input, self.W) + self.b
        self.output = (lin_output if activation is None else activation(lin_output))
        self.params = [self.W, self.b]


class MLP(object):
    def __init__(self, rng, input, n_in, n_hidden, n_out):
        self.hiddenLayer = HiddenLayer(rng=rng, input=input, n_in=n_in, n_out=n_hidden,
                                       activation=T.tanh)
        self.logRegressionLayer = LogisticRegression(input=self.hiddenLayer.output,
                                                     n_in=n_hidden, n_out=n_out)
        self.L1 = abs(self.hiddenLayer.W).sum() + abs(self.logRegressionLayer.W).sum()
        self.L2_sqr = (self.hiddenLayer.W ** 2).sum() + (self.logRegressionLayer.W ** 2).sum()
        self.negative_log_likelihood = self.logRegressionLayer.negative_log_likelihood
        self.errors = self.logRegressionLayer.errors
        self.params = self.hiddenLayer.params + self.logRegressionLayer.params
        self.input = input


def test_mlp_on_digits():
    learning_rate, L1_reg, L2_reg, n_epochs, batch_size, n_hidden = 0.1, 0.0, 0.0001, 15, 20, 40
    (train_set_x, train_set_y), _, (test_set_x, test_set_y) = load_data('digits', (1200, 0, 500))
    n_train_batches = train_set_x.get_value(borrow=True).shape[0] // batch_size

    index = T.lscalar()
    x = T.matrix('x')
    y = T.ivector('y')
    rng = numpy.random.RandomState(1234)
    classifier = MLP(rng=rng, input=x, n_in=8 * 8, n_hidden=n_hidden, n_out=10)
    cost = (classifier.negative_log_likelihood(y) + L1_reg * classifier.L1
            + L2_reg * classifier.L2_sqr)
    test_model = theano.function(inputs=[], outputs=classifier.errors(y),
                                 givens={x: test_set_x, y: test_set_y})
    gparams = [T.grad(cost, param) for param in classifier.params]
    updates = [(param, param - learning_rate * gparam)
               for param, gparam in zip(classifier.params, gparams)]
    train_model = theano.function(
        inputs=[index], outputs=cost, updates=updates,
        givens={x: train_set_x[index * batch_size: (index + 1) * batch_size],
                y: train_set_y[index * batch_size: (index + 1) * batch_size]})

    before = test_model()
    epoch_costs = []
    for epoch in range(n_epochs):
        epoch_costs.append(numpy.mean([train_model(i) for i in range(n_train_batches)]))
    after = test_model()
    assert before > 0.6                               # an untrained net is near chance
    assert epoch_costs[-1] < 0.5 * epoch_costs[0]
    assert after < 0.1, after                         # chance: 0.9


# --------------------------------------------------------------------------- dA.py
class dA(object):
    """Denoising autoencoder with tied weights (the tutorial's class)."""

    def __init__(self, numpy_rng, theano_rng=None, input=None, n_visible=784, n_hidden=500,
                 W=None, bhid=None, bvis=None):
        self.n_visible = n_visible
        self.n_hidden = n_hidden
        if not theano_rng:
            theano_rng = RandomStreams(numpy_rng.randint(2 ** 30))
        if not W:
            initial_W = numpy.asarray(
                numpy_rng.uniform(low=-4 * numpy.sqrt(6. / (n_hidden + n_visible)),
                                  high=4 * numpy.sqrt(6. / (n_hidden + n_visible)),
                                  size=(n_visible, n_hidden)),
                dtype=theano.config.floatX)
            W = theano.shared(value=initial_W, name='W', borrow=True)
        if not bvis:
            bvis = theano.shared(value=numpy.zeros(n_visible, dtype=theano.config.floatX),
                                 borrow=True)
        if not bhid:
            bhid = theano.shared(value=numpy.zeros(n_hidden, dtype=theano.config.floatX),
                                 name='b', borrow=True)
        self.W = W
        self.b = bhid
        self.b_prime = bvis
        self.W_prime = self.W.T
        self.theano_rng = theano_rng
        if input is None:
            self.x = T.dmatrix(name='input')
        else:
            self.x = input
        self.params = [self.W, self.b, self.b_prime]

    def get_corrupted_input(self, input, corruption_level):
        return self.theano_rng.binomial(size=input.shape, n=1, p=1 - corruption_level,
                                        dtype=theano.config.floatX) * input

    def get_hidden_values(self, input):
        return T.nnet.sigmoid(T.dot(input, self.W) + self.b)

    def get_reconstructed_input(self, hidden):
        return T.nnet.sigmoid(T.dot(hidden, self.W_prime) + self.b_prime)

    def get_cost_updates(self, corruption_level, learning_rate):
        tilde_x = self.get_corrupted_input(self.x, corruption_level)
        y = self.get_hidden_values(tilde_x)
        z = self.get_reconstructed_input(y)
        L = - T.sum(self.x * T.log(z) + (1 - self.x) * T.log(1 - z), axis=1)
        cost = T.mean(L)
        gparams = T.grad(cost, self.params)
        updates = [(param, param - learning_rate * gparam)
                   for param, gparam in zip(self.params, gparams)]
        return (cost, updates)


def test_denoising_autoencoder_on_mnist():
    learning_rate, training_epochs, batch_size = 0.1, 3, 20
    (train_set_x, _), _, (test_set_x, _) = load_data('mnist', (600, 0, 300))
    n_train_batches = train_set_x.get_value(borrow=True).shape[0] // batch_size

    index = T.lscalar()
    x = T.matrix('x')
    rng = numpy.random.RandomState(123)
    theano_rng = RandomStreams(rng.randint(2 ** 30))
    da = dA(numpy_rng=rng, theano_rng=theano_rng, input=x, n_visible=28 * 28, n_hidden=100)
    cost, updates = da.get_cost_updates(corruption_level=0.3, learning_rate=learning_rate)
    train_da = theano.function([index], cost, updates=updates,
                               givens={x: train_set_x[index * batch_size:
                                                      (index + 1) * batch_size]})
    # the clean reconstruction error of held-out digits
    z = da.get_reconstructed_input(da.get_hidden_values(x))
    recon = T.mean(-T.sum(x * T.log(z) + (1 - x) * T.log(1 - z), axis=1))
    test_cost = theano.function([], recon, givens={x: test_set_x})

    # corruption masks differ from call to call (the random stream advances)
    mask = theano.function([x], da.get_corrupted_input(x, 0.3))
    ones = numpy.ones((2, 784), dtype=theano.config.floatX)
    m1, m2 = mask(ones), mask(ones)
    assert 0.6 < m1.mean() < 0.8 and not numpy.array_equal(m1, m2)

    before = test_cost()
    epoch_costs = [numpy.mean([train_da(i) for i in range(n_train_batches)])
                   for _ in range(training_epochs)]
    after = test_cost()
    # baseline: the best constant reconstruction (the mean training image)
    tx = test_set_x.get_value()
    p = numpy.clip(train_set_x.get_value().mean(axis=0), 1e-6, 1 - 1e-6)
    baseline = numpy.mean(-numpy.sum(tx * numpy.log(p) + (1 - tx) * numpy.log(1 - p), axis=1))
    assert epoch_costs[-1] < epoch_costs[0]
    assert after < 0.5 * before
    assert after < 0.8 * baseline, (after, baseline)


# --------------------------------------------------------------------------- L2 + givens
def _train_l2_softmax(l2, n_epochs=10, batch_size=50, learning_rate=0.5):
    """Softmax regression with an L2 penalty, minibatches picked by ``givens`` from shared
    data and a learning rate kept in a shared variable (decayed by an update)."""
    (train_x, train_y), _, (test_x, test_y) = load_data('digits', (1200, 0, 500))
    index = T.lscalar('index')
    x = T.matrix('x')
    y = T.ivector('y')
    lr = theano.shared(numpy.asarray(learning_rate, dtype=theano.config.floatX), name='lr')
    model = LogisticRegression(input=x, n_in=64, n_out=10)
    cost = model.negative_log_likelihood(y) + l2 * T.sum(model.W ** 2)
    grads = T.grad(cost, model.params)
    updates = [(p, p - lr * g) for p, g in zip(model.params, grads)]
    train = theano.function(
        [index], cost, updates=updates,
        givens=[(x, train_x[index * batch_size:(index + 1) * batch_size]),
                (y, train_y[index * batch_size:(index + 1) * batch_size])])
    decay = theano.function([], lr, updates=[(lr, lr * 0.8)])
    test = theano.function([], model.errors(y), givens={x: test_x, y: test_y})
    n_batches = train_x.get_value(borrow=True).shape[0] // batch_size
    for epoch in range(n_epochs):
        for i in range(n_batches):
            train(i)
        decay()
    return test(), float(numpy.sum(model.W.get_value() ** 2)), float(lr.get_value())


@pytest.mark.parametrize("mode,linker", [("FAST_RUN", "auto"), ("FAST_COMPILE", "auto"),
                                         ("FAST_RUN", "py")])
def test_l2_regularised_model_with_givens(mode, linker):
    # linker=py: the optimized graph (fused kernels, BLAS calls) on the numpy backend
    with theano.config.change_flags(mode=mode, linker=linker):
        err_l2, norm_l2, lr_end = _train_l2_softmax(l2=0.01)
        err_free, norm_free, _ = _train_l2_softmax(l2=0.0)
    assert abs(lr_end - 0.5 * 0.8 ** 10) < 1e-6
    assert err_l2 < 0.15 and err_free < 0.15, (err_l2, err_free)   # chance: 0.9
    assert norm_l2 < 0.5 * norm_free, (norm_l2, norm_free)


# --------------------------------------------------------------------------- docs
def test_first_steps_doc(tmp_path, monkeypatch):
    """docs/first_steps.md runs as written: its Python blocks, in order, in one namespace."""
    import os
    import re
    doc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                       "first_steps.md")
    with open(doc) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for k, code in enumerate(blocks):
        exec(compile(code, f"{doc}:block{k}", "exec"), namespace)
