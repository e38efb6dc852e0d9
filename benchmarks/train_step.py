"""Training throughput: images/s of one training step (forward, backward, AdamW) of PlaygroundUNet vs
diffusers UNet2DModel on the flagship's config, interleaved in one process.

    python benchmarks/train_step.py [--threads 2] [--batch 64]
"""

import argparse

import torch
import torch.nn.functional as F

from common import interleaved


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers import UNet2DModel

    from playground import PlaygroundUNet
    from playground.train import TrainConfig, flagship_unet_config

    config = flagship_unet_config(TrainConfig(data_dir="", out=""))
    torch.manual_seed(0)
    ours = PlaygroundUNet(**config)
    theirs = UNet2DModel(**config)
    theirs.load_state_dict(ours.state_dict())
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28, generator=generator)
    noise = torch.randn(x.shape, generator=generator)
    t = torch.randint(0, 1000, (args.batch,), generator=generator)
    y = torch.randint(0, 11, (args.batch,), generator=generator)

    def step_of(model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            loss = F.mse_loss(model(x, t, y).sample, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    times = interleaved({"ours": step_of(ours), "diffusers": step_of(theirs)}, repeats=args.repeats, warmup=2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{sum(p.numel() for p in ours.parameters()) / 1e6:.2f} M parameters")
    print(f"ours {args.batch / times['ours']:.1f} img/s   diffusers {args.batch / times['diffusers']:.1f} img/s   "
          f"throughput ratio ours/diffusers {times['diffusers'] / times['ours']:.3f}")


if __name__ == "__main__":
    main()
