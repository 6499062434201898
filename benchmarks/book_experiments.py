"""The book's experiments: each one a recipe sweep whose results file a chapter shows.

    python benchmarks/book_experiments.py --list
    python benchmarks/book_experiments.py simsiam-stopgrad moco-queue     # train (resume, reuse) and write
    python benchmarks/book_experiments.py all --lock /tmp/sslbook-run.lock

A chapter's live runs last minutes, which is too short for some effects the chapter teaches (a
bigger MoCo queue, the stop-gradient, the batch size) to stand out from run-to-run noise. So each
such experiment is trained here, every arm for the same number of *epochs* in the ``cpu`` profile
(deterministic, independent of machine load), with a second seed wherever the difference it
teaches is small, by :mod:`sweep_recipes` (one process per arm, resumable): the results go to
``benchmarks/results/sweep-<name>.json``, and the chapter reads that file
(:func:`sslbook.book.show_sweep`) and states what it shows, noise included. An arm named
``<setting>-s<N>`` is seed N of ``<setting>`` (``seed=N``); a chapter averages over them.

Run it alone on the machine: the numbers do not depend on load, but the stored minutes do.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep_recipes  # noqa: E402

# The cpu recipe of a config is its shipped `profiles: cpu:` section; these are the arms on top of it.
PROGRESSIVE = "data.crop_schedule=[[0, 16], [0.33, 24], [0.66, 32]]"
CROP_FLIP_ONLY = "[{size: 32, jitter_p: 0.0, gray_p: 0.0}, {size: 32, jitter_p: 0.0, gray_p: 0.0}]"  # no colour


@dataclass(frozen=True)
class Experiment:
    config: str  # a shipped CIFAR-10 config name
    epochs: int  # per arm
    arms: dict  # setting name -> overrides
    page: str  # the chapter that shows it
    seeds: tuple = (0, 1)  # every setting is trained once per seed: two, so a difference meets the seed spread
    common: tuple = ()  # overrides of every arm
    question: str = ""
    measure: Optional[str] = None  # a function of MEASURES, run on every finished arm's checkpoint

    def arm_list(self) -> list[tuple[str, list[str]]]:
        """(arm name, overrides) of every setting and seed; seed 0 keeps the setting's name."""
        out = []
        for setting, overrides in self.arms.items():
            for seed in self.seeds:
                name = setting if seed == 0 else f"{setting}-s{seed}"
                out.append((name, [*overrides] + ([f"seed={seed}"] if seed else [])))
        return out


EXPERIMENTS = {
    "simsiam-stopgrad": Experiment(
        "simsiam",
        epochs=3,
        arms={"stopgrad": [], "no-stopgrad": ["method_args.stop_gradient=false"]},
        page="chapters/03_architectures/siamese.ipynb",
        question="does SimSiam collapse without the stop-gradient (output std and kNN)?",
    ),
    # MoCo v1's recipe, as in the paper's own ablations of K and m (both on v1); a step also costs about half
    # of MoCo v2's (one query and one key pass per image, not two of each; step_profile-cpu.json: 693 vs 1476 ms)
    "moco-queue": Experiment(
        "moco_v1",
        epochs=3,
        arms={
            "k4096": [],
            "k512": ["method_args.queue_size=512"],
            "k16384": ["method_args.queue_size=16384"],
            "m0": ["method_args.momentum=0"],
        },
        page="chapters/03_architectures/moco.ipynb",
        question="does a larger queue help, and does a key encoder without momentum (m = 0) fail?",
    ),
    "simclr-batch-temperature": Experiment(
        "simclr",
        epochs=3,
        arms={
            "recipe": [],  # the cpu recipe: batch 128, T = 0.2
            "t0.1": ["method_args.temperature=0.1"],
            "t0.5": ["method_args.temperature=0.5"],
            "b32": ["batch_size=32"],
            "b512": ["batch_size=512"],
        },
        page="chapters/03_architectures/simclr.ipynb",
        question="how do the temperature and the batch size (the number of negatives) change a short run?",
    ),
    "bank-staleness": Experiment(
        "instdisc",
        epochs=4,
        arms={"bank-m0.5": [], "bank-m0": ["method_args.bank_momentum=0"]},
        page="chapters/03_architectures/memory_bank.ipynb",
        question="how far does the memory bank lag the encoder, by the age of its rows, with and without averaging?",
        measure="bank_staleness",
    ),
    # the choosing page: a pretext task on data where its label carries no information, and an augmentation that
    # removes what the labels need (data.variant: sslbook.data.rotated_copy / tinted_copy)
    "rotation-rotated": Experiment(
        "rotation",
        epochs=2,
        arms={"upright": [], "rotated": ["data.variant=rotated"]},
        page="chapters/02_pretext/choosing.ipynb",
        question="how much does RotNet lose when the images have no upright orientation?",
    ),
    "simclr-rotated": Experiment(
        "simclr",
        epochs=2,
        arms={"upright": [], "rotated": ["data.variant=rotated"]},
        page="chapters/02_pretext/choosing.ipynb",
        question="and SimCLR, whose task does not refer to an orientation?",
    ),
    "simclr-tinted": Experiment(
        "simclr",
        epochs=2,
        arms={
            "colour": ["data.variant=tinted"],
            "crop-flip": ["data.variant=tinted", f"augment={CROP_FLIP_ONLY}"],
        },
        page="chapters/02_pretext/choosing.ipynb",
        # both arms at 32 px throughout: the recipe's progressive resizing needs a named augmentation
        common=("data.crop_schedule=null",),
        question="what does colour augmentation cost when the label is the colour (and buy for the objects)?",
        measure="object_knn",
    ),
}


STALENESS_EDGES = (0.25, 0.5, 0.75, 1.0, 1.5)  # age bins of the memory-bank rows, in epochs


def bank_staleness(out_dir: Path) -> dict:
    """How far a trained InstDisc run's memory bank lags its encoder, by the age of the rows: the
    chapter's :func:`sslbook.methods.memory_bank.bank_staleness` on 5,000 training images (seeded)."""
    from sslbook.bench import load_method
    from sslbook.book import sample_examples
    from sslbook.eval import normalize_images
    from sslbook.methods.memory_bank import bank_staleness as staleness
    from sslbook.methods.memory_bank import staleness_by_age
    from sslbook.trainer import load_datasets

    method, cfg = load_method(out_dir)
    train_set, _ = load_datasets(cfg)
    subset = sample_examples(len(train_set), min(5000, len(train_set)), seed=0)
    report = staleness(method, normalize_images(train_set.images[subset], train_set.mean, train_set.std), subset)
    steps_per_epoch = len(train_set) // cfg.batch_size
    return {
        "steps_per_epoch": steps_per_epoch,
        "mean_cos": float(report["cos"].mean()),
        "bins": staleness_by_age(report, steps_per_epoch, STALENESS_EDGES),
    }


def object_knn(out_dir: Path) -> dict:
    """kNN top-1 (k=200) of a run trained on ``data.variant=tinted`` on the *object* labels the tinted images
    still carry (the same images in the same order without the variant), from the frozen embedding."""
    import dataclasses

    from sslbook.bench import load_method
    from sslbook.eval import extract_features, knn_accuracy
    from sslbook.trainer import load_datasets

    method, cfg = load_method(out_dir)
    train, test = load_datasets(cfg)
    plain_train, plain_test = load_datasets(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, variant=None)))
    train_x = extract_features(method.embed, train.images, train.mean, train.std)
    test_x = extract_features(method.embed, test.images, train.mean, train.std)
    return {"knn200_top1": knn_accuracy(train_x, plain_train.labels, test_x, plain_test.labels)}


MEASURES = {"bank_staleness": bank_staleness, "object_knn": object_knn}


def add_measures(name: str, path: Path) -> None:
    """Run the experiment's measure on every finished arm that does not have it yet; rewrite ``path``."""
    exp = EXPERIMENTS[name]
    if exp.measure is None or not path.is_file():
        return
    sweep = json.loads(path.read_text())
    for arm in sweep["arms"]:
        if arm.get("finished") and exp.measure not in arm:
            print(f"[experiments] {name}/{arm['arm']}: {exp.measure}", flush=True)
            arm[exp.measure] = MEASURES[exp.measure](Path(arm["out_dir"]))
    sweep_recipes.write(path, sweep)


def run(name: str, lock=None, reuse: bool = True) -> int:
    exp = EXPERIMENTS[name]
    argv = [exp.config, "--name", name, "--epochs", str(exp.epochs), "--set", "progress=false", *exp.common]
    for arm, overrides in exp.arm_list():
        argv += ["--arm", f"{arm}:" + (overrides[0] if overrides else ""), *overrides[1:]]
    if lock:
        argv += ["--lock", str(lock)]
    if not reuse:
        argv.append("--no-reuse")
    print(f"[experiments] {name}: {exp.question}", flush=True)
    code = sweep_recipes.main(argv)
    if code == 0:
        add_measures(name, sweep_recipes.RESULTS / f"sweep-{name}.json")
    return code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"experiments to run: all, {', '.join(EXPERIMENTS)}")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--lock", default=None, metavar="FILE", help="hold this lock while an arm trains")
    parser.add_argument("--no-reuse", action="store_true", help="retrain finished arms")
    args = parser.parse_args(argv)
    if args.list or not args.names:
        for name, exp in EXPERIMENTS.items():
            arms = len(exp.arm_list())
            print(f"{name:26s} {exp.config}, {arms} arms x {exp.epochs} epochs -> {exp.page}: {exp.question}")
        return 0
    names = list(EXPERIMENTS) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        print(f"error: unknown experiment {unknown[0]!r}; valid: all, {', '.join(EXPERIMENTS)}", file=sys.stderr)
        return 2
    for name in names:
        code = run(name, args.lock, not args.no_reuse)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
