"""``python -m beray.bench NAME [--json]``: run a benchmark, print a table (or one JSON object)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from beray import console


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beray.bench", description=__doc__)
    sub = parser.add_subparsers(dest="name", required=True)
    d = sub.add_parser("decode", help="clip reader vs a naive reader and the decode bound (one core)")
    d.add_argument("--videos", type=int, default=3, help="videos per format (default 3)")
    d.add_argument("--clips", type=int, default=6, help="clips per video (default 6)")
    b = sub.add_parser("be", help="vectorised BE vs a per-frame loop and a same-size copy")
    b.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    t = sub.add_parser("train", help="Ray Data + Ray Train vs a DataLoader loop vs the model alone")
    t.add_argument("--preset", default="cpu-tiny", help="config preset (default cpu-tiny)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--epochs", type=int, default=4, help="epochs per path; the first is warm-up (default 4)")
    t.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: one GPU per Train worker, the other paths on CUDA (default cpu)")
    t.add_argument("--repeats", type=int, default=1,
                   help="Ray and DataLoader runs in turn this many times: medians and the ratio's range (default 1)")
    t.add_argument("--members", type=int, metavar="N",
                   help="instead: one pack of N members (be.gamma 0, 0.1, ...) against the same N runs one after "
                        "another: wall time and decode CPU-seconds (--epochs default 3)")
    t.add_argument("--videos", choices=("synth", "ucf"), default="synth",
                   help="with --members: BackgroundBias-Synth, or UCF101-shaped videos (320x240) as bench decode's")
    k = sub.add_parser("soak", help="resident memory over many clips: the reader, then the Ray Data pipeline")
    k.add_argument("--clips", type=int, default=20_000, help="clips per path (default 20,000)")
    k.add_argument("--epoch-clips", type=int, default=4_800,
                   help="clips per pipeline epoch: the synthetic set repeated (default 4,800)")
    e = sub.add_parser("extract", help="frozen feature extraction (Ray Data batch inference) vs the model alone")
    e.add_argument("--preset", default="cpu-tiny", help="config preset (default cpu-tiny)")
    e.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                   help="overrides (default: model.width=0.5 augment.size=64 data.num_frames=16)")
    e.add_argument("--batch-size", type=int, default=32, help="clips per model call (default 32)")
    w = sub.add_parser("sweep", help="4 tiny trials as one beray.sweep vs back-to-back beray.train + beray.eval")
    w.add_argument("--epochs", type=int, default=2, help="epochs per trial (default 2)")
    w.add_argument("--pack", action="store_true",
                   help="instead: the same 4-point grid packed and unpacked: wall time and decode CPU-seconds")
    w.add_argument("--videos", choices=("synth", "ucf"), default="synth",
                   help="with --pack: BackgroundBias-Synth, or UCF101-shaped videos (320x240) as bench decode's")
    for p in (d, b, t, k, e, w):
        p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
        p.add_argument("--verbose", action="store_true", help="show Ray's own output live (default: a log file)")
    args = parser.parse_args(argv)
    if getattr(args, "device", None) == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda, but torch sees no CUDA device here; run without it (or --device cpu)",
                  file=sys.stderr)
            return 2

    import importlib

    if getattr(args, "members", None) is not None and args.members < 2:
        print("error: --members: a pack needs at least 2 members", file=sys.stderr)
        return 2
    packed = args.name == "train" and args.members is not None
    bench = importlib.import_module("beray.bench.pack" if packed else f"beray.bench.{args.name}")
    runs = {
        "decode": lambda: bench.run(bench.DecodeBench(videos_per_format=args.videos, clips_per_video=args.clips)),
        "be": lambda: bench.run(args.device),
        "train": lambda: (bench.run(args.preset, args.overrides, args.epochs if args.epochs != 4 else 3, args.members,
                                     args.videos)
                          if packed else bench.run(args.preset, args.overrides, args.epochs, args.device,
                                                   args.repeats)),
        "extract": lambda: bench.run(args.preset, args.overrides, args.batch_size),
        "sweep": lambda: bench.run_pack(args.epochs, args.videos) if args.pack else bench.run(args.epochs),
        "soak": lambda: bench.run(args.clips, epoch_clips=args.epoch_clips, progress=not args.json),
    }
    with console.session("bench", args.verbose):
        res = runs[args.name]()
        with contextlib.redirect_stdout(console.out()):  # the table is beray's: on the terminal
            if args.json:
                print(json.dumps(res))
            elif getattr(args, "pack", False):
                bench.print_pack_table(res)
            else:
                bench.print_table(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
