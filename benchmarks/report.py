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


def main():
    parts = [INTRO, augment_section(load("augment_throughput.json")), train_section(load("train_throughput.json")),
             simclr_section(load("simclr_cpu.json"))]
    (HERE / "README.md").write_text("\n".join(p for p in parts if p))
    print(f"wrote {HERE / 'README.md'}")


if __name__ == "__main__":
    main()
