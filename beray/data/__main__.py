"""``python -m beray.data``: ``check`` a dataset, or generate BackgroundBias-``synth``."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from beray.data.check import check_dataset, print_report
from beray.data.datasets import DATASETS, DatasetError, index_dataset
from beray.data.synth import SPLITS, SynthConfig, generate, own_family_fraction, synth_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beray.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="index a dataset, open every video, list the unreadable ones",
                       description="Exit code 0 when every video reads, 1 otherwise, 2 for a bad dataset root.")
    c.add_argument("--dataset", default="synth", help=f"synth (default), {', '.join(DATASETS)}")
    c.add_argument("--root", help="dataset root (see README.md, 'Datasets'); synth's default is generated")
    c.add_argument("--split", type=int, default=1, help="official split number (UCF101, HMDB51: 1-3)")
    c.add_argument("--workers", type=int, help="parallel processes (default: all cores)")
    c.add_argument("--decode-all", action="store_true", help="decode every frame, not only the first and last")
    c.add_argument("--timeout", type=float, default=60.0, help="seconds per video before it counts as unreadable")

    s = sub.add_parser("synth", help="generate BackgroundBias-Synth (real video files + manifests)")
    s.add_argument("out_dir")
    defaults = SynthConfig()
    for f in dataclasses.fields(SynthConfig):
        s.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                       help=f"default {getattr(defaults, f.name)}")
    s.add_argument("--workers", type=int, help="parallel processes (default: all cores, at most 8)")

    args = parser.parse_args(argv)
    try:
        if args.command == "synth":
            names = {f.name for f in dataclasses.fields(SynthConfig)}
            config = synth_config({k: v for k, v in vars(args).items() if k in names and v is not None})
            out = generate(args.out_dir, config, workers=args.workers)
            counts = {sp: (out / f"{sp}.csv").read_text().count("\n") - 1 for sp in SPLITS}
            own = own_family_fraction(out)
            print(f"BackgroundBias-Synth ({', '.join(f'{k} {v}' for k, v in counts.items())}) written to {out}")
            print("  background from the class's own family: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in own.items()) + f" (rho {config.rho}, chance 1/6)")
            print(f"  manifests: {out}/{{{','.join(SPLITS)}}}.csv")
            print(f"  preview:   {out}/preview.png")
            print(f"  check it:  python -m beray.data check --dataset synth --root {out}")
            return 0
        index = index_dataset(args.dataset, args.root, args.split)
    except (DatasetError, ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = check_dataset(index, workers=args.workers, decode_all=args.decode_all, timeout_s=args.timeout)
    print_report(report, sys.stdout)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
