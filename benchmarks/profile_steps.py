"""Where each method's training step spends its time, part by part, in the `cpu` profile.

    python benchmarks/profile_steps.py                      # the eight architecture methods, 5 timed steps
    python benchmarks/profile_steps.py moco_v2 simclr --steps 3
    python benchmarks/profile_steps.py moco_v2 --set method_args.shuffle_bn_splits=1
    python benchmarks/profile_steps.py moco_v2 --ops 15      # also torch.profiler's 15 costliest ops
    python benchmarks/profile_steps.py moco_v2 --split-bn loop   # MoCo's Shuffle BN before vectorisation

Each config is built exactly as the trainer builds it (``load_config(name, ["profile=cpu", ...])``,
``trainer.build_model``, ``build_augment``, ``build_optimizer``, the profile's precision and
``channels_last``) at batch 256, width 16, and trained on random 32 px uint8 images for 2 warm-up
steps and ``--steps`` timed ones. Each part is timed with ``time.perf_counter`` (on the CPU every
operation is synchronous): augment (the views of a batch), forward (the method's loss, including
key encoders, queues and banks), backward, optimiser (``before_optimizer_step`` and the step) and
momentum update (``after_optimizer_step``). Medians over the timed steps, in ms, and the process's CPU
time per step (all threads; less sensitive to other processes than wall time). Writes
``benchmarks/results/step_profile-cpu.json`` (``--out``) with the load average before and after: on a
shared machine the numbers move with the load, so compare arms measured at the same load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARCHITECTURES = ["simclr", "instdisc", "pirl", "moco_v1", "moco_v2", "swav", "simsiam", "byol"]
PARTS = ("augment", "forward", "backward", "optimizer", "momentum_update")
NUM_DATA = 50_000  # memory banks are sized for CIFAR-10's training set


def loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def profile(name: str, steps: int, batch: int, width: int, overrides=(), ops: int = 0) -> dict:
    from sslbook.config import load_config
    from sslbook.optim import build_optimizer
    from sslbook.trainer import build_augment, build_model

    cfg = load_config(f"cifar10/{name}", ["profile=cpu", f"batch_size={batch}", f"model.width={width}", *overrides])
    torch.manual_seed(0)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    method = build_model(cfg, num_data=NUM_DATA, mean=mean, std=std, labels=torch.arange(NUM_DATA) % 10)
    if cfg.channels_last:
        method = method.to(memory_format=torch.channels_last)
    augment = build_augment(cfg, mean, std, 32)
    optimizer = build_optimizer(method, cfg.optim, cfg.batch_size)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    g = torch.Generator().manual_seed(0)
    method.train()
    times = {part: [] for part in PARTS}
    cpu_times = []

    def step(record: bool):
        images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g)
        index = torch.randperm(NUM_DATA, generator=g)[:batch]
        c0, t0 = time.process_time(), time.perf_counter()
        with torch.no_grad():
            views = augment(images)
            if cfg.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        t1 = time.perf_counter()
        with autocast:
            loss = method(views, index)["loss"]
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        method.before_optimizer_step(1)
        optimizer.step()
        t4 = time.perf_counter()
        method.after_optimizer_step(0.5)
        t5 = time.perf_counter()
        if record:
            for part, dt in zip(PARTS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                times[part].append(1000 * dt)
            cpu_times.append(1000 * (time.process_time() - c0))

    for _ in range(2):
        step(False)
    for _ in range(steps):
        step(True)
    row = {
        "config": name,
        "overrides": list(overrides),
        "batch_size": batch,
        "width": width,
        "precision": cfg.precision,
        "channels_last": cfg.channels_last,
        "steps": steps,
        **{part: round(statistics.median(v), 1) for part, v in times.items()},
    }
    row["total"] = round(sum(row[p] for p in PARTS), 1)
    row["images_per_s"] = round(1000 * batch / row["total"], 1)
    row["cpu_ms"] = round(statistics.median(cpu_times), 1)  # CPU time of the process per step, all threads
    if ops:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            step(False)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=ops)
        print(f"\n{name}: torch.profiler, one step, by self CPU time\n{table}")
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| config | overrides | " + " | ".join(PARTS) + " | total ms | images/s | CPU ms |",
        "|---|---|" + "---:|" * (len(PARTS) + 3),
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {' '.join(r['overrides']) or '-'} | "
            + " | ".join(f"{r[p]:.0f}" for p in PARTS)
            + f" | {r['total']:.0f} | {r['images_per_s']:.0f} | {r['cpu_ms']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", default=ARCHITECTURES, help="CIFAR-10 config names")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per config (after 2 warm-up steps)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument(
        "--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides for every config"
    )
    parser.add_argument("--ops", type=int, default=0, help="also print torch.profiler's N costliest ops")
    parser.add_argument(
        "--split-bn",
        choices=("fused", "loop"),
        default="fused",
        help="MoCo's Shuffle-BN emulation: SplitBatchNormFunction (default) or the autograd loop "
        "over sub-batches it replaced, for before/after timings",
    )
    parser.add_argument("--out", default=str(RESULTS / "step_profile-cpu.json"))
    args = parser.parse_args(argv)
    if args.split_bn == "loop":
        from sslbook.methods.moco import SplitBatchNorm

        SplitBatchNorm.forward_fused = SplitBatchNorm.forward_loop
    from sslbook.report import cpu_model

    before = loadavg()
    rows = []
    for name in args.configs:
        rows.append(profile(name, args.steps, args.batch, args.width, args.set, args.ops))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    result = {
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/profile_steps.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch": torch.__version__,
        "processor": cpu_model(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "split_bn": args.split_bn,
        "load_average": [before, loadavg()],
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\n{markdown(rows)}\n\nload average before/after: {before} / {result['load_average'][1]}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
