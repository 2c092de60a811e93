"""``T.nnet``: activations, softmax family, cross-entropies, convolution, batch
normalization and images2neibs."""
from graphc.tensor.nnet.basic import (  # noqa: F401
    LogSoftmax, Softmax, binary_crossentropy, categorical_crossentropy,
    crossentropy_categorical_1hot, elu, hard_sigmoid, log_softmax, logsoftmax, relu,
    selu, sigmoid, sigmoid_binary_crossentropy, softmax, softmax_graph, softmax_with_bias,
    softplus, softsign, ultra_fast_sigmoid)
from graphc.tensor.nnet import basic as nnet  # noqa: F401  (theano.tensor.nnet.nnet)

from graphc.tensor.nnet.conv import (  # noqa: F401
    conv2d, conv2d_grad_wrt_inputs, conv2d_grad_wrt_weights)
from graphc.tensor.nnet.neighbours import images2neibs, neibs2images  # noqa: F401
from graphc.tensor.nnet import abstract_conv, bn, conv, neighbours  # noqa: F401
