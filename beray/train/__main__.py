"""``python -m beray.train [CONFIG] [--set a.b=c ...]``: one pretraining run on Ray.

With no arguments it pretrains the ``cpu-tiny`` preset on BackgroundBias-Synth on
a local Ray instance. With ``RAY_ADDRESS`` set it joins that cluster.
"""

from __future__ import annotations

import argparse
import sys

from beray import console
from beray import storage as st
from beray.config import PRESETS, Config, ConfigError, load_config, resume_changes
from beray.console import say


def parse(argv: list[str] | None) -> tuple[Config, str | None, bool]:
    p = argparse.ArgumentParser(prog="python -m beray.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config (sections data, augment, be, method, model, optim, run)")
    p.add_argument("--preset", choices=list(PRESETS),
                   help="base settings (default: cpu-tiny without CONFIG, paper with one)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set be.gamma=0.5 (repeatable)")
    p.add_argument("--workers", type=int, help="Ray Train workers (run.workers)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (run.gpus_per_worker)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a finished or interrupted run from its directory")
    p.add_argument("--verbose", action="store_true", help="show Ray's own output live (default: in RUN_DIR/ray.log)")
    args = p.parse_args(argv)
    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"run.workers={args.workers}")
    if args.gpus_per_worker is not None:
        overrides.append(f"run.gpus_per_worker={args.gpus_per_worker}")
    if args.resume:
        from beray.train.launch import load_run_config

        parent, name = st.split(args.resume)
        try:
            saved = load_run_config(args.resume)
        except FileNotFoundError as e:
            raise ConfigError(str(e)) from None
        base = saved.model_dump(mode="json")
        base["run"].update(storage=parent, name=name)
        cfg = load_config(overrides=overrides, base=base)
        for field, (old, new) in resume_changes(saved, cfg).items():
            say(f"resume: {field} {old!r} -> {new!r}")
        return cfg, name, args.verbose
    preset = args.preset or ("paper" if args.config else "cpu-tiny")
    return load_config(args.config, overrides, preset=preset), None, args.verbose


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, name, verbose = parse(argv)
    except ConfigError as e:
        say(f"error: {e}", error=True)
        return 2
    from beray.train.launch import run_dir, run_name

    name = name or run_name(cfg)
    with console.session("train", verbose) as session:
        session.log_in(run_dir(cfg, name))
        return _run(cfg, name)


def _run(cfg: Config, name: str) -> int:
    from ray.train import TrainingFailedError

    from beray.data.datasets import DatasetError
    from beray.train.launch import fit, run_dir

    say(f"beray: {cfg.method_summary()} on {cfg.data.dataset}, "
        f"{cfg.model.backbone} x{cfg.model.width}, {cfg.optim.epochs} epochs, {cfg.run.workers} worker(s)")
    directory = run_dir(cfg, name)
    try:
        info = fit(cfg, name, echo=True)
    except (ConfigError, DatasetError) as e:  # the user's data or storage; anything else is a bug: traceback
        say(f"error: {e}", error=True)
        return 2
    except TrainingFailedError as e:
        say(f"error: training failed after {cfg.run.max_failures} restart(s): {e}", error=True)
        say(f"continue from the last checkpoint with: python -m beray.train --resume {directory}", error=True)
        return 1
    except KeyboardInterrupt:
        say(f"\ninterrupted; continue with: python -m beray.train --resume {directory}", error=True)
        return 130
    m = info.metrics
    say(f"\ndone: {m.get('epoch')} epochs, loss {m.get('loss', float('nan')):.4f}, "
          f"{m.get('clips_per_s', 0):.1f} clips/s, {m['skipped_total']} video(s) skipped")
    say(f"  checkpoint:  {info.checkpoint}")
    say(f"  config:      {st.join(info.dir, 'config.yaml')}")
    say(f"  TensorBoard: tensorboard --logdir {st.join(info.dir, 'tensorboard')}")
    say(f"  resume:      python -m beray.train --resume {info.dir} --set optim.epochs=N")
    return 0


if __name__ == "__main__":
    sys.exit(main())
