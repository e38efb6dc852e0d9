"""How well the forward pass uses the CPU, how its cost grows, and where the time goes.

    python benchmarks/hardware.py [--threads 2]

1. Hardware efficiency: FLOPs of one flagship forward (torch.utils.flop_counter: convolutions, matmuls,
   attention; normalisation and activations are not counted, so the share is a slight underestimate)
   divided by its time, against the GFLOP/s of a large fp32 matmul measured in the same run.
2. Growth: forward time of the flagship's architecture against image size (28, 64, 128) and batch (1..64),
   ours beside diffusers' UNet2DModel on the same weights (the weights are convolutional, so any size runs).
3. Profile: the share of forward time in convolutions, attention, normalisation, activations and the rest.
"""

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from common import flagship_pair, interleaved

SIZES = (28, 64, 128)
BATCHES = (1, 4, 16, 64)
MAX_ELEMENTS = 128 * 128 * 16  # larger inputs take minutes per forward on 2 cores and tell nothing new
CATEGORIES = {  # profiler op name fragments -> what the time is spent on
    "convolution": ("conv", "mkldnn_convolution"),
    "attention": ("scaled_dot_product", "_flash_attention", "bmm", "baddbmm", "softmax"),
    "normalisation": ("group_norm", "native_group_norm", "layer_norm"),
    "activation": ("silu",),
    "linear (time MLP, projections, 1x1 shortcuts)": ("addmm", "linear", "mm"),
}


def inputs(batch, size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, size, size, generator=generator), torch.full((batch,), 500), torch.arange(batch) % 11


def matmul_gflops(n=2048, repeats=10):
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e9


def forward_flops(model, batch, size):
    x, t, y = inputs(batch, size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x, t, y)
    return counter.get_total_flops()


def category_of(op_name):
    name = op_name.lower()
    for category, fragments in CATEGORIES.items():
        if any(fragment in name for fragment in fragments):
            return category
    return "other (copies, concat, adds, embedding)"


def profile_shares(model, batch, size, repeats=5):
    """Self CPU time per category (leaf ops only, so nothing is counted twice)."""
    x, t, y = inputs(batch, size)
    with torch.inference_mode():
        model(x, t, y)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                model(x, t, y)
    totals = defaultdict(float)
    for event in prof.key_averages():
        totals[category_of(event.key)] += event.self_cpu_time_total
    overall = sum(totals.values())
    return {category: seconds / overall for category, seconds in sorted(totals.items(), key=lambda kv: -kv[1])}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ours, theirs = flagship_pair()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    print("\n## Hardware efficiency (batch 16, 28x28)")
    flops = forward_flops(ours, 16, 28)
    x, t, y = inputs(16, 28)
    with torch.inference_mode():
        times = interleaved({"ours": lambda: ours(x, t, y), "diffusers": lambda: theirs(x, t, y)}, repeats=args.repeats)
    peak = matmul_gflops()
    for name in ("ours", "diffusers"):
        achieved = flops / times[name] / 1e9
        print(f"{name}: {flops / 1e9:.3f} GFLOP per forward in {times[name] * 1e3:.1f} ms = {achieved:.1f} GFLOP/s, "
              f"{achieved / peak:.0%} of the {peak:.1f} GFLOP/s of a 2048x2048 fp32 matmul")

    print("\n## Forward time (ms) against image size and batch; ours / diffusers in brackets")
    print("| size | " + " | ".join(f"batch {b}" for b in BATCHES) + " | GFLOP per image |")
    print("|---|" + "---|" * (len(BATCHES) + 1))
    for size in SIZES:
        cells = []
        for batch in BATCHES:
            if batch * size * size > MAX_ELEMENTS:
                cells.append("—")
                continue
            x, t, y = inputs(batch, size)
            repeats = max(2, args.repeats * 28 * 28 // (size * size * batch))
            with torch.inference_mode():
                times = interleaved({"ours": lambda: ours(x, t, y), "diffusers": lambda: theirs(x, t, y)},
                                    repeats=repeats, warmup=1)
            cells.append(f"{times['ours'] * 1e3:.1f} ({times['ours'] / times['diffusers']:.2f})")
        print(f"| {size}×{size} | " + " | ".join(cells) + f" | {forward_flops(ours, 1, size) / 1e9:.3f} |")

    for batch, size in ((16, 28), (1, 128)):
        print(f"\n## Where the time goes (ours, batch {batch}, {size}x{size}, self CPU time)")
        for category, share in profile_shares(ours, batch, size).items():
            print(f"- {category}: {share:.0%}")


if __name__ == "__main__":
    main()
