"""``T.nnet``: activations, softmax family, cross-entropies, and (when present)
convolution and batch normalization."""
from graphc.tensor.nnet.basic import (  # noqa: F401
    LogSoftmax, Softmax, binary_crossentropy, categorical_crossentropy,
    crossentropy_categorical_1hot, elu, hard_sigmoid, log_softmax, logsoftmax, relu,
    selu, sigmoid, sigmoid_binary_crossentropy, softmax, softmax_graph, softmax_with_bias,
    softplus, softsign, ultra_fast_sigmoid)
from graphc.tensor.nnet import basic as nnet  # noqa: F401  (theano.tensor.nnet.nnet)

try:  # convolution lands with the neural-net op set
    from graphc.tensor.nnet.conv import conv2d, conv2d_grad_wrt_inputs  # noqa: F401
except ImportError:  # pragma: no cover
    pass
try:
    from graphc.tensor.nnet import bn  # noqa: F401
except ImportError:  # pragma: no cover
    pass
