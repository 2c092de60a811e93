"""``theano.tensor.nnet.abstract_conv``: Theano 1.0's module path for the convolution ops.

graphc has one implementation (graphc.tensor.nnet.conv); this module keeps Theano's names
importable from Theano's path.
"""
from graphc.tensor.nnet.conv import (  # noqa: F401
    AbstractConv2d, AbstractConv2d_gradInputs, AbstractConv2d_gradWeights, BaseConv2d,
    Conv2d, Conv2dGradInputs, Conv2dGradWeights, border_pads, conv2d, conv2d_grad_wrt_inputs,
    conv2d_grad_wrt_weights, get_conv_output_shape)
