"""Float interpreter throughput against PyTorch eager on two small CNNs.

Builds each network twice from the same weights: as a torch.nn.Sequential, and as a qcompile
Graph through the Graph API (one node per layer). Prints images/s for both at batch 1 and 256
and the ratio (ours / torch), each from the median time per call. torch runs with 2 intra-op
threads by default, and numpy's BLAS the same number (through threadpoolctl, if installed).

    python benchmarks/interp_throughput.py [--seconds 1.0] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from qcompile.interp import Interpreter
from qcompile.ir import Graph, TensorType


def digits_cnn() -> nn.Sequential:
    """conv16-BN-ReLU, conv32-BN-ReLU, maxpool, conv32-ReLU, GAP, FC on 1x8x8 inputs."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def lenet_cnn() -> nn.Sequential:
    """LeNet-style MNIST net on 1x28x28: two 5x5 conv-BN-ReLU-pool stages, then two FCs."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def randomise(model: nn.Sequential, seed: int = 0) -> nn.Sequential:
    """Non-trivial BN statistics, so BN is not an identity in either implementation."""
    gen = torch.Generator().manual_seed(seed)
    for m in model:
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def to_graph(model: nn.Sequential, input_shape: tuple) -> Graph:
    """The same network through the Graph API, layer by layer, sharing the torch weights."""
    g = Graph("bench")
    x = g.add_input("x", TensorType((None,) + tuple(input_shape[1:]), "f32"))

    def const(name, tensor):
        return g.add_constant(name, tensor.detach().numpy().astype(np.float32))

    for i, m in enumerate(model):
        if isinstance(m, nn.Conv2d):
            ph, pw = m.padding
            x = g.add_node("conv2d", [x, const(f"w{i}", m.weight), const(f"b{i}", m.bias)],
                           dict(stride=m.stride, padding=(ph, pw, ph, pw), dilation=m.dilation,
                                groups=m.groups), name=f"conv{i}").output
        elif isinstance(m, nn.BatchNorm2d):
            x = g.add_node("batch_norm", [x, const(f"g{i}", m.weight), const(f"be{i}", m.bias),
                                          const(f"m{i}", m.running_mean),
                                          const(f"v{i}", m.running_var)],
                           dict(eps=m.eps), name=f"bn{i}").output
        elif isinstance(m, nn.ReLU):
            x = g.add_node("relu", [x], name=f"relu{i}").output
        elif isinstance(m, nn.MaxPool2d):
            k = (m.kernel_size, m.kernel_size)
            x = g.add_node("max_pool2d", [x], dict(kernel=k), name=f"pool{i}").output
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            x = g.add_node("global_avg_pool", [x], name=f"gap{i}").output
        elif isinstance(m, nn.Flatten):
            x = g.add_node("flatten", [x], name=f"flat{i}").output
        elif isinstance(m, nn.Linear):
            x = g.add_node("linear", [x, const(f"w{i}", m.weight), const(f"b{i}", m.bias)],
                           name=f"fc{i}").output
        else:
            raise TypeError(f"benchmark converter has no rule for {type(m).__name__}")
    g.outputs = [x]
    return g


def images_per_s(fn, batch: int, seconds: float) -> float:
    """batch / median call time over `seconds` of calls: the median shrugs off the scheduler
    stalls a shared machine inflicts on multi-threaded BLAS/OpenMP, which a plain mean does not."""
    fn()  # warm-up (allocations, lazy imports)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return batch / float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch intra-op threads, and numpy BLAS threads where threadpoolctl "
                             "is installed (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=args.threads, user_api="blas")
    except ImportError:
        pass  # numpy's BLAS keeps its default thread count
    rows = []
    for name, make, shape in (("digits 1x8x8", digits_cnn, (1, 1, 8, 8)),
                              ("lenet 1x28x28", lenet_cnn, (1, 1, 28, 28))):
        model = randomise(make())
        interp = Interpreter(to_graph(model, shape), "float")
        for batch in (1, 256):
            x = np.random.default_rng(1).standard_normal((batch,) + shape[1:]).astype(np.float32)
            xt = torch.from_numpy(x)
            with torch.no_grad():
                ref = model(xt).numpy()
            ours = interp.run([x])[0]
            err = float(np.max(np.abs(ours - ref)))
            assert err < 1e-3, f"{name}: interpreter and torch disagree by {err}"

            def torch_run():
                with torch.no_grad():
                    model(xt)
            q = images_per_s(lambda: interp.run([x]), batch, args.seconds)
            tt = images_per_s(torch_run, batch, args.seconds)
            rows.append((name, batch, q, tt, q / tt, err))
    print(f"{'model':<15}{'batch':>6}{'qcompile img/s':>16}{'torch img/s':>14}{'ratio':>8}"
          f"{'max |diff|':>12}")
    for name, batch, q, tt, ratio, err in rows:
        print(f"{name:<15}{batch:>6}{q:>16,.0f}{tt:>14,.0f}{ratio:>8.2f}{err:>12.1e}")


if __name__ == "__main__":
    main()
