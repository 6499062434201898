"""Write benchmarks/README.md from the results files in benchmarks/results/ (never by hand).

    python benchmarks/report.py
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

INTRO = """# Benchmarks

Scripts that measure speed and accuracy and write results files into `results/`; this page is
generated from those files by `python benchmarks/report.py`. Nothing here is a timed test. All
numbers were measured on the machine named in each table (2 CPU cores, no GPU) and vary with load.

| script | what it measures |
|---|---|
| `augment_throughput.py` | two-view SimCLR augmentation throughput at 32 px: sslbook's batched pipeline vs torchvision's PIL pipeline in a 2-worker DataLoader (and kornia if installed) |
| `train_throughput.py` | images/s and peak memory of the whole SimCLR training step: fp32, channels_last, bf16, torch.compile |
| `simclr_cpu.py` | SimCLR in the `cpu` profile: kNN top-1 on the CIFAR-10 test set after a fixed wall-clock budget |
| `python -m sslbook bench` | several methods under one budget: kNN and linear-probe top-1, images/s, peak memory (writes `results/bench-<profile>.json`) |

## Comparing methods: `python -m sslbook bench`

```bash
python -m sslbook bench --configs cifar10/simclr,cifar10/moco_v2 --profile cpu --minutes 5
python -m sslbook bench --configs all --profile cpu            # every shipped CIFAR-10 config
python -m sslbook bench --configs all --profile gpu --runs runs/bench-gpu --set seed=1
```

Each config is trained by the one trainer with the same profile, budget (`--minutes`, default the
profile's) and `--set key=value` overrides, into `<runs>/<name>-<profile>` (default `runs/bench`). The
frozen representation of each run (`method.embed`) is scored twice on the test set: kNN (k = 200 and 20)
and a linear probe (100 epochs on standardised features; `--no-linear` skips it). A finished run already
in that folder with the same effective settings is reused, not retrained (settings that cannot change
the network, such as `progress` or `eval_every`, are not compared); any other run there is retrained,
with a line saying why. The rows go to `results/bench-<profile>.json` (`--out`) together with the date,
torch version, CPU model, cores and the load average before and after, and a Markdown table is printed.
The same functions are `sslbook.bench.run_all`, `results_table` and `accuracy_vs_time`, which the
chapters' closing tables use.
"""


def load(name):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def augment_section(r):
    if r is None:
        return ""
    lines = ["## Augmentation throughput", "",
             f"{r['benchmark']}, batch {r['batch_size']}; torch {r['torch']}, {r['torch_threads']} threads on "
             f"{r['cpu_count']} CPUs, data: {r['data'].split(' (')[0]}, {r['date'][:10]}; load average before/after "
             f"{r['loadavg_1min_before_after']}.", "",
             "| pipeline | images/s (best window) | median | CPU ms / 1000 images | vs torchvision PIL |",
             "|---|---:|---:|---:|---:|"]
    for x in r["results"]:
        lines.append(f"| {x['method']} | {x['images_per_s']:,.0f} | {x['median_images_per_s']:,.0f} | "
                     f"{x['cpu_ms_per_1000_images']:.0f} | {x['speedup_vs_torchvision']:.2f}x |")
    return "\n".join(lines) + "\n"


def train_section(r):
    if r is None:
        return ""
    lines = ["## Training-step throughput", "",
             f"{r['benchmark']}, width {r['width']}, batch {r['batch_size']}, {r['steps']} steps; "
             f"torch {r['torch']}, {r['threads']} threads on {r['cpus']} CPUs ({r['device']}), {r['date']}.", "",
             "| variant | images/s | peak memory (MB) |", "|---|---:|---:|"]
    for x in r["rows"]:
        if "error" in x:
            lines.append(f"| {x['variant']} | failed: {x['error']} | |")
        else:
            lines.append(f"| {x['variant']} | {x['images_per_s']:.0f} | {x['peak_memory_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def simclr_section(r):
    if r is None:
        return ""
    x = r["results"]
    return "\n".join([
        "## SimCLR in the `cpu` profile", "",
        f"`{r['command']}` ({r['date']}, {r['machine']['cpus']} CPUs, torch {r['machine']['torch']})", "",
        "| encoder | batch | training minutes | epochs | images/s | kNN top-1 (k=200) | kNN top-1 (k=20) | raw pixels (k=200) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| {x['encoder']} | {x['batch_size']} | {x['train_minutes']:.1f} | {x['epochs']:.1f} | {x['images_per_s']:.0f} | "
        f"{x['knn200_top1']:.2f}% | {x['knn20_top1']:.2f}% | {r['raw_pixels_knn200_top1']:.2f}% |", ""])


def bench_sections():
    """One table per results/bench-<profile>.json written by `python -m sslbook bench`."""
    files = sorted(f for f in RESULTS.glob("bench-*.json") if f.name != "bench-smoke.json")  # smoke: meaningless
    if not files:
        return ""
    from sslbook.bench import results_table  # imports torch: only when there is something to show

    parts = []
    for path in files:
        r = json.loads(path.read_text())
        env = r.get("environment", {})
        parts += [f"## Methods under one budget (`{path.name}`)", "",
                  f"`{r.get('command', 'python -m sslbook bench')}` ({env.get('date', '?')[:10]}, profile "
                  f"{env.get('profile')}, {env.get('cpu')}, {env.get('cores')} cores, torch {env.get('torch')}; "
                  f"load average at start/end {env.get('loadavg_1min_start')}/{env.get('loadavg_1min_end')}).", "",
                  results_table(r["rows"], columns=["config", "budget_minutes", "train_minutes", "epochs",
                                                    "images_per_s", "peak_memory_mb", "knn200_top1", "knn20_top1",
                                                    "linear_top1", "reused"]), ""]
    return "\n".join(parts)


def main():
    parts = [INTRO, augment_section(load("augment_throughput.json")), train_section(load("train_throughput.json")),
             simclr_section(load("simclr_cpu.json")), bench_sections()]
    (HERE / "README.md").write_text("\n".join(p for p in parts if p))
    print(f"wrote {HERE / 'README.md'}")


if __name__ == "__main__":
    main()
