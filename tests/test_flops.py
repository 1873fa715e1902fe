"""The analytic FLOP model (harness/flops.py), checked against hand counts."""

from fwbench.harness.measure import flops
from fwbench.harness import spec


def test_cnn_conv_layers_are_about_30_gflop_per_step_at_batch_512():
    task = spec.TASKS["cnn"]
    conv1 = (2 * 1 * 25 + 1) * 32 * 28 * 28  # same padding: every output position, padded zeros too
    conv2 = (2 * 32 * 25 + 1) * 64 * 14 * 14
    dense = 2 * 3136 * 1024 + 1024 + 2 * 1024 * 10 + 10
    assert flops.forward_flops(task) == conv1 + conv2 + dense
    assert 3 * (conv1 + conv2) * 512 / 1e9 == 32.812695552  # the "~30 GFLOP" (conv only)
    assert round(flops.train_step_flops(task) / 1e9, 1) == 42.7


def test_gru_counts_three_gate_blocks_per_step():
    def gru(t, n_in, h):
        return t * (2 * 3 * h * (n_in + h) + 17 * h)

    dense = 2 * 256 * 1024 + 1024 + 2 * 1024 * 10 + 10
    assert flops.forward_flops(spec.TASKS["gru"]) == gru(28, 28, 128) + gru(28, 128, 256) + dense
    bi = 2 * (gru(28, 28, 128) + gru(28, 128, 256)) + 256  # both stacks + the sum
    assert flops.forward_flops(spec.TASKS["bigru"]) == bi + dense
    conv1d = (2 * 28 * 5 + 1) * 32 * 28
    assert flops.forward_flops(spec.TASKS["cnn_gru"]) == conv1d + gru(14, 32, 128) + gru(14, 128, 256) + dense
