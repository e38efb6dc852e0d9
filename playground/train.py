"""Train a PlaygroundUNet as a DDPM ε-predictor on MNIST, with classifier-free guidance labels.

    python -m playground.train --out weights/mnist            # MNIST from the Hugging Face Hub (fetched once)
    python -m playground.train --data-dir D --out weights/x   # MNIST from the gzip IDX files in D
    python -m playground.train ... --resume                   # continue a killed run where it stopped
    python -m playground.train ... --ablation skip:all=0      # a variant trained without skips
    python -m playground.train ... --init-from weights/mnist  # start from shipped weights

The recipe: AdamW, linear warmup then cosine decay, gradient clipping, EMA weights (those are
shipped), DDPMScheduler noise. Labels 0-9 are digits; with probability --uncond-prob a label is
replaced by the null label (the last class index), so one model samples both with and without a digit.

Reproducible and resumable by construction: the data order of epoch e is a permutation seeded by
(seed, e) and the noise of step s is drawn from a generator seeded by (seed, s), so a run killed at any
step and resumed from its last checkpoint continues exactly as if it had not been stopped. Checkpoints
hold model, EMA and optimizer tensors in safetensors (never pickle). Runs through accelerate, so the
same command uses a GPU when there is one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from .ablation import parse_ablation_specs
from .cli import ShowDefaults
from .data import mnist
from .unet import TRAINING_ABLATION_KEY, PlaygroundUNet

CHECKPOINT_TENSORS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"


@dataclass
class TrainConfig:
    data_dir: str | None  # None: MNIST from the Hugging Face Hub
    out: str
    checkpoint_dir: str | None = None
    epochs: float = 8.0
    batch_size: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.05  # cosine decays to this share of lr, not to zero: the last steps still learn
    warmup_steps: int = 500
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    uncond_prob: float = 0.15  # share of labels replaced by the null label (classifier-free guidance)
    min_snr_gamma: float | None = None  # weight each example's loss by min(SNR, γ)/SNR; None: every t alike
    seed: int = 0
    limit: int | None = None  # use only the first N training images (smoke tests)
    log_every: int = 50
    checkpoint_every: int = 500
    export_every: int = 2000  # also write the EMA weights to --out, so a session end still ships something
    ablation: list[str] = field(default_factory=list)
    init_from: str | None = None
    resume: bool = False
    stop_after: int | None = None  # checkpoint and stop at this step, as if killed (to test --resume)
    end_at_step: int | None = None  # end the run here, exported, on the schedule --epochs plans (a run cut short)
    threads: int | None = None
    gradient_checkpointing: bool = False  # recompute each ResnetBlock in the backward pass: less memory, more time
    mixed_precision: str = "no"  # "bf16": autocast on a GPU; the EMA and shipped weights stay fp32
    curve_every: float | None = None  # record a learning-curve point every this many epochs (None: none)
    curve_classifier: str = "weights/classifier"
    # architecture (flagship defaults: 3 levels 28/14/7, attention at 14, 7 and the bottleneck)
    block_out_channels: tuple[int, ...] = (32, 64, 96)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = (1, 2)
    attention_head_dim: int = 16
    norm_num_groups: int = 8
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"


def flagship_unet_config(cfg: TrainConfig) -> dict:
    levels = len(cfg.block_out_channels)
    down = tuple("AttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if levels - 1 - i in cfg.attention_levels else "UpBlock2D" for i in range(levels))
    return dict(
        sample_size=28, in_channels=1, out_channels=1, block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block, down_block_types=down, up_block_types=up,
        attention_head_dim=cfg.attention_head_dim, norm_num_groups=cfg.norm_num_groups, num_class_embeds=11,
    )


def build_model(cfg: TrainConfig) -> PlaygroundUNet:
    if cfg.init_from:
        model = PlaygroundUNet.from_pretrained(cfg.init_from, subfolder="unet")
        if cfg.ablation:
            raise ValueError("--ablation with --init-from: the training ablation comes from the loaded config")
        return model
    probe = PlaygroundUNet(**flagship_unet_config(cfg))
    ablation = parse_ablation_specs(cfg.ablation, probe.skip_resolutions, probe.attention_sites)
    if ablation.is_intact:
        return probe
    return PlaygroundUNet(**flagship_unet_config(cfg), training_ablation=ablation.to_dict())


def learning_rate(step: int, total_steps: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def timestep_loss_weights(alphas_cumprod: torch.Tensor, min_snr_gamma: float | None) -> torch.Tensor:
    """The loss weight of each timestep: Min-SNR-γ (Hang et al. 2023) for ε-prediction, or 1 everywhere.

    The ε-loss of nearly clean images (high SNR) is large and mostly unpredictable noise, so with equal
    weights those steps dominate the gradient; min(SNR, γ)/SNR turns them down and leaves steps with
    SNR ≤ γ, where a digit's shape is decided, at full weight.
    """
    if min_snr_gamma is None:
        return torch.ones_like(alphas_cumprod)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return snr.clamp(max=min_snr_gamma) / snr


def earlier_training_stages(init_from: str | None) -> list[dict]:
    """The training records of the weights a run starts from, oldest first, so a card can tell the whole story."""
    record_path = Path(init_from) / "training.json" if init_from else None
    if record_path is None or not record_path.is_file():
        return []
    record = json.loads(record_path.read_text())
    return record.pop("earlier_stages", []) + [record]


def model_settings(config) -> dict:
    """A model config without what diffusers notes about its file (`_diffusers_version`, `_name_or_path`, ...),
    keeping the training ablation a saved config holds under a private key: without it a variant would be built intact."""
    settings = {key: value for key, value in config.items() if not key.startswith("_")}
    if config.get(TRAINING_ABLATION_KEY):
        settings["training_ablation"] = config[TRAINING_ABLATION_KEY]
    return settings


def export_pipeline(model: PlaygroundUNet, ema: EMAModel, scheduler: DDPMScheduler, out: Path, card: dict) -> None:
    """Write the EMA weights as a diffusers DDPMPipeline folder (what `weights/<name>/` holds)."""
    write_pipeline_folder(out, ema_weights(model, ema).cpu(), scheduler, card)


def ema_weights(model: PlaygroundUNet, ema: EMAModel) -> PlaygroundUNet:
    """A model of `model`'s config holding the EMA weights, on the same device."""
    ema_model = PlaygroundUNet.from_config(model_settings(model.config))  # no `_name_or_path` of the --init-from folder
    ema_model.to(model.conv_in.weight.device)
    ema.copy_to(ema_model.parameters())
    return ema_model


def write_pipeline_folder(out: Path, unet: PlaygroundUNet, scheduler: DDPMScheduler, record: dict) -> Path:
    """A DDPMPipeline folder: unet/, scheduler/, model_index.json and the training record; replaces `out` whole."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    scheduler.save_pretrained(tmp / "scheduler")
    (tmp / "model_index.json").write_text(
        json.dumps({"_class_name": "DDPMPipeline", "_diffusers_version": _diffusers_version(),
                    "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}, indent=2) + "\n"
    )
    (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    if (out / "README.md").exists():
        shutil.copy(out / "README.md", tmp / "README.md")  # keep the model card
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


class CurveJudge:
    """Learning-curve points: the EMA weights sampled on seeds no evaluation uses, judged by our classifier."""

    def __init__(self, classifier_path: str, scheduler: DDPMScheduler):
        from .classifier import load_classifier

        self.classifier = load_classifier(classifier_path)
        self.scheduler_config = dict(scheduler.config)

    def point(self, model: PlaygroundUNet, ema: EMAModel, step: int, steps_per_epoch: int) -> dict:
        from .evaluate import curve_point
        from .sampling import DiffusionModel

        ema_model = ema_weights(model, ema).eval().requires_grad_(False)
        judged = curve_point(DiffusionModel("curve", ema_model, self.scheduler_config), self.classifier)
        return {"step": step, "epochs": round(step / steps_per_epoch, 3), **judged}


def save_checkpoint(directory: Path, model, ema: EMAModel, optimizer, state: dict) -> None:
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"ema.{i}": p.detach().contiguous() for i, p in enumerate(ema.shadow_params)}
    for i, param in enumerate(optimizer.param_groups[0]["params"]):
        for key, value in optimizer.state.get(param, {}).items():
            tensors[f"optim.{i}.{key}"] = value.detach().reshape(-1).contiguous() if value.dim() == 0 else value.detach().contiguous()
    state = dict(state, ema_step=ema.optimization_step)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / (CHECKPOINT_TENSORS + ".tmp"))
    (directory / (CHECKPOINT_STATE + ".tmp")).write_text(json.dumps(state, indent=2))
    # rename last, so a kill mid-write leaves the previous checkpoint whole
    os.replace(directory / (CHECKPOINT_TENSORS + ".tmp"), directory / CHECKPOINT_TENSORS)
    os.replace(directory / (CHECKPOINT_STATE + ".tmp"), directory / CHECKPOINT_STATE)


def load_checkpoint(directory: Path, model, ema: EMAModel, optimizer) -> dict:
    tensors = load_file(directory / CHECKPOINT_TENSORS)
    state = json.loads((directory / CHECKPOINT_STATE).read_text())
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    for i, shadow in enumerate(ema.shadow_params):
        shadow.data.copy_(tensors[f"ema.{i}"])
    ema.optimization_step = state["ema_step"]
    for i, param in enumerate(optimizer.param_groups[0]["params"]):
        entries = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"optim.{i}.")}
        if entries:
            entries["step"] = entries["step"].reshape(())
            optimizer.state[param] = {k: v.to(param.device) for k, v in entries.items()}
    return state


def train(cfg: TrainConfig) -> Path:
    from accelerate import Accelerator

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # cpu=True where there is no GPU: accelerate then runs several launched processes as one job (gloo), not as
    # copies that each train alone
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    device = accelerator.device
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the attention projections, as cuDNN already does for convs
        torch.backends.cudnn.benchmark = True  # one shape all run long: let cuDNN pick its fastest convolutions
    out = Path(cfg.out)
    checkpoint_dir = Path(cfg.checkpoint_dir or Path("checkpoints") / out.name)

    images, labels = mnist("train", cfg.data_dir, limit=cfg.limit)
    images, labels = images.to(device), labels.to(device)
    # under `accelerate launch` every process draws the same global batch and trains on its own slice of it, so N
    # processes of batch B take the steps one process of batch N·B takes (DDP averages their gradients)
    processes, rank = accelerator.num_processes, accelerator.process_index
    global_batch = cfg.batch_size * processes
    mine = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)
    steps_per_epoch = len(images) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} × {processes} processes is larger than the {len(images)} training images")
    total_steps = int(cfg.epochs * steps_per_epoch)
    last_step = total_steps if cfg.end_at_step is None else min(total_steps, cfg.end_at_step)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    null_label = model.config.num_class_embeds - 1
    # clip_sample=False: samplers built from this config must not clip x̂0 to [-1, 1]; with classifier-free
    # guidance, DDIM re-derives ε̂ from the clipped x̂0 and digit accuracy fell from 1.00 to 0.62 (guidance 1.5)
    scheduler = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule, clip_sample=False)
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    loss_weights = timestep_loss_weights(alphas_cumprod, cfg.min_snr_gamma)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    ema = EMAModel(unwrapped.parameters(), decay=cfg.ema_decay, foreach=True)
    ema.to(device)

    step, wall_before, curve = 0, 0.0, []
    if cfg.resume and (checkpoint_dir / CHECKPOINT_STATE).exists():
        state = load_checkpoint(checkpoint_dir, unwrapped, ema, optimizer)
        step, wall_before, curve = state["step"], state["wall_seconds"], state.get("curve", [])
        accelerator.print(f"resumed from {checkpoint_dir} at step {step}/{total_steps}")
    elif cfg.resume:
        accelerator.print(f"no checkpoint in {checkpoint_dir}; starting fresh")

    earlier_stages = earlier_training_stages(cfg.init_from)

    def card() -> dict:
        return {"train_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
                "steps": step, "epochs_done": round(step / steps_per_epoch, 3), "images_seen": step * global_batch,
                "processes": processes, "global_batch": global_batch,
                "wall_seconds": round(wall_before + time.perf_counter() - started, 1), "device": str(device),
                "torch_threads": torch.get_num_threads(),
                "final_loss_ema": None if loss_ema is None else loss_ema.item(), "earlier_stages": earlier_stages,
                **({"curve": curve} if curve else {})}

    curve_steps = None if cfg.curve_every is None else max(1, round(cfg.curve_every * steps_per_epoch))
    curve_judge = None if curve_steps is None else CurveJudge(cfg.curve_classifier, scheduler)

    started, loss_ema, window_start, window_step = time.perf_counter(), None, time.perf_counter(), step
    order_epoch, order = None, None
    model.train()
    while step < last_step:
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order_epoch = epoch
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)).to(device)
        batch_index = order[position * global_batch:(position + 1) * global_batch][mine]
        noise_rng = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)

        x0, y = images[batch_index], labels[batch_index]  # (B, 1, 28, 28), (B,)
        # drawn for the whole global batch, in one order, then sliced: the same numbers whatever the process count
        noise = torch.randn((global_batch, *x0.shape[1:]), generator=noise_rng, device=device)[mine]
        t = torch.randint(0, cfg.num_train_timesteps, (global_batch,), generator=noise_rng, device=device)[mine]
        drop = (torch.rand(global_batch, generator=noise_rng, device=device) < cfg.uncond_prob)[mine]
        y = torch.where(drop, torch.full_like(y, null_label), y)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise  # what DDPMScheduler.add_noise computes

        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, total_steps, cfg)
        # a tuple, not the output dataclass: accelerate's fp32 conversion of autocast outputs turns that into a dict
        prediction = model(x_t, t, y, return_dict=False)[0]
        per_example = F.mse_loss(prediction.float(), noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (loss_weights[t] * per_example).mean()
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        ema.step(unwrapped.parameters())
        step += 1

        # the running loss stays on the device: reading it every step would make the CPU wait for the GPU
        loss_ema = loss.detach() if loss_ema is None else torch.lerp(loss_ema, loss.detach(), 0.02)
        if step % cfg.log_every == 0 or step == last_step:
            value = accelerator.reduce(loss.detach(), reduction="mean").item()
            now = time.perf_counter()
            rate = (step - window_step) * global_batch / (now - window_start)
            window_start, window_step = now, step
            accelerator.print(
                f"step {step}/{total_steps} epoch {step / steps_per_epoch:.2f} loss {value:.4f} (avg {loss_ema.item():.4f}) "
                f"lr {optimizer.param_groups[0]['lr']:.2e} {rate:.0f} img/s",
                flush=True,
            )
        if curve_judge is not None and accelerator.is_main_process and (step % curve_steps == 0 or step == last_step):
            point = curve_judge.point(unwrapped, ema, step, steps_per_epoch)
            curve.append(point)
            accelerator.print(f"curve {json.dumps(point)}", flush=True)
            model.train()
        stopping = step == cfg.stop_after
        if accelerator.is_main_process and (step % cfg.checkpoint_every == 0 or step == last_step or stopping):
            save_checkpoint(checkpoint_dir, unwrapped, ema, optimizer,
                            {"step": step, "wall_seconds": wall_before + time.perf_counter() - started, "curve": curve})
        if stopping:
            accelerator.print(f"stopped after step {step} (--stop-after); continue with --resume", flush=True)
            accelerator.end_training()
            return out  # as if killed right after the checkpoint: no export
        if accelerator.is_main_process and (step % cfg.export_every == 0 or step == last_step):
            export_pipeline(unwrapped, ema, scheduler, out, card())
    if accelerator.is_main_process and (total_steps == 0 or not (out / "unet").exists()):
        export_pipeline(unwrapped, ema, scheduler, out, card())
    accelerator.wait_for_everyone()
    accelerator.end_training()  # tears the process group down: a process that exits holding it can abort (SIGABRT)
    return out


def parse_args(argv=None) -> TrainConfig:
    defaults = TrainConfig(data_dir="", out="")
    p = argparse.ArgumentParser(prog="python -m playground.train", description=__doc__.split("\n\n")[0],
                                formatter_class=ShowDefaults)
    p.add_argument("--data-dir", help="folder with the MNIST gzip IDX files (default: fetch MNIST from the Hugging Face "
                   "Hub once, ylecun/mnist at a pinned commit, cached under HF_HOME)")
    p.add_argument("--out", required=True, help="pipeline folder to write (e.g. weights/mnist)")
    p.add_argument("--checkpoint-dir", help="where checkpoints go (default checkpoints/<out name>)")
    p.add_argument("--epochs", type=float, default=defaults.epochs, help="length of the run: sets the learning-rate schedule")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images a step, on each process")
    p.add_argument("--lr", type=float, default=defaults.lr, help="AdamW peak learning rate (linear warmup, then cosine decay)")
    p.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help="steps of linear warmup")
    p.add_argument("--ema-decay", type=float, default=defaults.ema_decay, help="decay of the exported EMA weights")
    p.add_argument("--uncond-prob", type=float, default=defaults.uncond_prob, help="share of labels replaced by the null label (no digit)")
    p.add_argument("--min-snr-gamma", type=float, metavar="GAMMA",
                   help="weight the loss by min(SNR, GAMMA)/SNR (Min-SNR; 5 in its paper); default: uniform")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seeds the initial weights, the data order and the noise")
    p.add_argument("--limit", type=int, help="train on the first N images only")
    p.add_argument("--log-every", type=int, default=defaults.log_every, help="steps between log lines")
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every, help="steps between checkpoints")
    p.add_argument("--export-every", type=int, default=defaults.export_every, help="steps between exports of the EMA weights to --out")
    p.add_argument("--ablation", action="append", default=[], metavar="SPEC",
                   help="train with a part switched off throughout: skip:all=0, attn:all, skip:14=0, attn:SITE, time")
    p.add_argument("--init-from", help="start from a shipped pipeline folder")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint, if any")
    p.add_argument("--stop-after", type=int, metavar="STEP",
                   help="checkpoint and stop at this step, as if killed (for testing --resume)")
    p.add_argument("--end-at-step", type=int, metavar="STEP",
                   help="end the run at this step, exported, on the learning-rate schedule --epochs plans")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass instead of keeping them (less memory, more time)")
    p.add_argument("--mixed-precision", default=defaults.mixed_precision, choices=["no", "bf16"],
                   help="bf16 autocast (on a GPU); the EMA and the exported weights stay fp32")
    p.add_argument("--curve-every", type=float, metavar="EPOCHS",
                   help="every this many epochs, sample the EMA weights and record a learning-curve point in the card")
    p.add_argument("--curve-classifier", default=defaults.curve_classifier, help="the classifier that judges the curve")
    p.add_argument("--block-out-channels", type=int, nargs="+", default=list(defaults.block_out_channels),
                   help="channels of each level, finest first")
    p.add_argument("--layers-per-block", type=int, default=defaults.layers_per_block, help="ResnetBlocks per encoder level")
    p.add_argument("--attention-levels", type=int, nargs="*", default=list(defaults.attention_levels),
                   help="levels (0 = finest) with self-attention; the bottleneck always has it")
    p.add_argument("--beta-schedule", default=defaults.beta_schedule, choices=["linear", "scaled_linear", "squaredcos_cap_v2"],
                   help="the DDPM noise schedule")
    args = p.parse_args(argv)
    if args.epochs <= 0 or args.batch_size < 1 or args.lr <= 0:
        p.error("--epochs, --batch-size and --lr must be positive")
    if not 0 <= args.uncond_prob < 1:
        p.error("--uncond-prob must be in [0, 1)")
    if args.min_snr_gamma is not None and args.min_snr_gamma <= 0:
        p.error("--min-snr-gamma must be positive")
    if args.curve_every is not None and args.curve_every <= 0:
        p.error("--curve-every must be positive")
    if args.end_at_step is not None and args.end_at_step < 1:
        p.error("--end-at-step must be at least 1")
    if args.stop_after is not None and args.stop_after < 1:
        p.error("--stop-after must be at least 1")
    values = {k: v for k, v in vars(args).items()}
    values["block_out_channels"] = tuple(values["block_out_channels"])
    values["attention_levels"] = tuple(values["attention_levels"])
    return TrainConfig(**values)


def main(argv=None) -> int:
    try:
        cfg = parse_args(argv)
        train(cfg)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
