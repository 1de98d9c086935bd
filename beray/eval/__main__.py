"""``python -m beray.eval MODE --checkpoint PATH [--dataset NAME --root DIR --split N] [--set a.b=c]``

Modes (the paper's evaluations, Sec. 4.1-4.7, and the cheap ones sweeps use as objectives):

  knn          weighted cosine kNN on frozen features (train as gallery), top-1/top-5
  linear       linear probe on the same cached features, top-1/top-5
  retrieve     Sec. 4.3 clip retrieval, Recall@1/5/10/20/50
  background   BackgroundBias-Synth: biased vs swapped accuracy, their gap, static-video probe
  finetune     Sec. 4.1 fine-tuning as a Ray Train job, 10-clip test (--splits 1,2,3 for Table 1)
  static-bias  Sec. 4.5 / Fig. 4: per-class static accuracy vs relative improvement (--against B)
  cam          Sec. 4.7 activation maps of test videos, PNG strip and GIF

PATH is a run directory (its last checkpoint), a checkpoint directory or a state.pt. With no
--dataset, BackgroundBias-Synth. Results go to RUN/eval/<mode>-<dataset>-split<N>.json and .md.
"""

from __future__ import annotations

import argparse
import sys

from beray import console, storage
from beray.console import say

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m beray.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    from beray.eval.run import MODES

    p.add_argument("mode", choices=MODES)
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="run dir, checkpoint dir or state.pt")
    p.add_argument("--against", metavar="PATH", help="static-bias: the baseline's fine-tuned checkpoint (e.g. MoCo)")
    p.add_argument("--dataset", help="synth (default), ucf101, hmdb51, actor-hmdb51, diving48, kinetics400, manifest")
    p.add_argument("--root", help="dataset root folder")
    p.add_argument("--split", type=int, help="dataset split (default 1)")
    p.add_argument("--splits", help="finetune: comma-separated splits, reported with their mean (e.g. 1,2,3)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the run's config, e.g. --set data.num_frames=16 or, for finetune, "
                        "--set optim.epochs=10 (repeatable)")
    p.add_argument("--k", type=int, default=20, help="neighbours of the kNN vote (default 20)")
    p.add_argument("--clips", type=int, default=10, help="finetune / static-bias: test clips per video (default 10)")
    p.add_argument("--videos", type=int, default=4, help="cam: test videos to draw (default 4)")
    p.add_argument("--batch-size", type=int, default=32, help="clips per model call in extraction (default 32)")
    p.add_argument("--actors", type=int, help="model actors (default: one per GPU, or per two CPUs)")
    p.add_argument("--no-cache", action="store_true", help="extract features again even when cached")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true", help="show Ray's own output live (default: RUN/eval/ray.log)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from beray.eval.run import USER_ERRORS, EvalOptions, evaluate

    opts = EvalOptions(against=args.against, dataset=args.dataset, root=args.root, split=args.split,
                       splits=args.splits, overrides=args.overrides, k=args.k, clips=args.clips, videos=args.videos,
                       batch_size=args.batch_size, actors=args.actors, progress=not args.quiet,
                       use_cache=not args.no_cache)
    with console.session("eval", args.verbose):
        try:
            reports = evaluate(args.mode, args.checkpoint, opts)
        except USER_ERRORS as e:  # the user's input: one message
            say(f"error: {e}", error=True)
            return 2
        except KeyboardInterrupt:
            say("\ninterrupted", error=True)
            return 130
        for stem, report, eval_dir in reports:
            js, md = report.write(eval_dir, stem)
            if args.json:
                say(storage.read_text(js))
            else:
                say("\n" + report.markdown())
                say(f"written: {js}\n         {md}" + "".join(f"\n         {f}" for f in report.files))
    return 1 if any(report.data.get("failed") for _, report, _ in reports) else 0  # a fine-tuning that stopped


if __name__ == "__main__":
    sys.exit(main())
