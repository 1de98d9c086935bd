"""``python -m beray.train [CONFIG] [--set a.b=c ...]``: one pretraining run on Ray.

With no arguments it pretrains the ``cpu-tiny`` preset on BackgroundBias-Synth on
a local Ray instance. With ``RAY_ADDRESS`` set it joins that cluster.

``--member be.noise=none --member be.noise=intra_frame`` trains a pack: both
members in one job, on one decoded stream, each with its own folder inside the
run's (RUN/noise-none, RUN/noise-intra_frame), read by ``beray.eval`` as a run's.
"""

from __future__ import annotations

import argparse
import sys

from beray import console
from beray import storage as st
from beray.config import PRESETS, Config, ConfigError, load_config, resume_changes
from beray.console import say
from beray.train.pack import make_pack, parse_member


def parse(argv: list[str] | None) -> tuple[Config, str | None, bool, list[list[str]]]:
    p = argparse.ArgumentParser(prog="python -m beray.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config (sections data, augment, be, method, model, optim, run; "
                                             "members: a pack's list of settings)")
    p.add_argument("--preset", choices=list(PRESETS),
                   help="base settings (default: cpu-tiny without CONFIG, paper with one)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set be.gamma=0.5 (repeatable)")
    p.add_argument("--member", dest="members", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="a member of a pack trained on the same stream, as overrides of the config, e.g. "
                        "--member be.noise=none --member be.noise=intra_frame,be.gamma=0.5 (repeatable)")
    p.add_argument("--workers", type=int, help="Ray Train workers (run.workers)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (run.gpus_per_worker)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a finished or interrupted run from its directory")
    p.add_argument("--verbose", action="store_true", help="show Ray's own output live (default: in RUN_DIR/ray.log)")
    args = p.parse_args(argv)
    members = [parse_member(m) for m in args.members]
    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"run.workers={args.workers}")
    if args.gpus_per_worker is not None:
        overrides.append(f"run.gpus_per_worker={args.gpus_per_worker}")
    if args.resume:
        from beray.train.launch import load_members, load_run_config

        parent, name = st.split(args.resume)
        try:
            if load_members(parent):  # its checkpoints are the pack's: resumed alone, it would start afresh in there
                raise ConfigError(f"--resume {args.resume}: {name} is a member of the pack {parent}; resume the "
                                  f"pack: python -m beray.train --resume {parent}")
            saved = load_run_config(args.resume)
        except FileNotFoundError as e:
            raise ConfigError(str(e)) from None
        except st.FAILURES as e:  # a store that cannot be read: credentials, an unknown scheme
            raise ConfigError(f"--resume {args.resume}: cannot read it: {e}") from None
        base = saved.model_dump(mode="json")
        base["run"].update(storage=parent, name=name)
        cfg = load_config(overrides=overrides, base=base)
        for field, (old, new) in resume_changes(saved, cfg).items():
            say(f"resume: {field} {old!r} -> {new!r}")
        if members:
            raise ConfigError("--member with --resume: a resumed run keeps its members (RUN/members.yaml)")
        return cfg, name, args.verbose, load_members(args.resume)
    preset = args.preset or (None if args.config else "cpu-tiny")  # a config's own preset: key, else paper
    listed: list[list[str]] = []
    cfg = load_config(args.config, overrides, preset=preset, members=listed)
    members = members or listed  # --member replaces the file's members:
    make_pack(cfg, members)  # a bad member is refused here, before Ray starts
    return cfg, None, args.verbose, members


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, name, verbose, members = parse(argv)
    except ConfigError as e:
        say(f"error: {e}", error=True)
        return 2
    from beray.train.launch import run_dir, run_name

    name = name or run_name(cfg, members)
    with console.session("train", verbose) as session:
        session.log_in(run_dir(cfg, name))
        return _run(cfg, name, members)


def _run(cfg: Config, name: str, members: list[list[str]]) -> int:
    from ray.train import TrainingFailedError

    from beray.data.datasets import DatasetError
    from beray.train.epochs import DataStalled
    from beray.train.launch import fit, run_dir

    pack = make_pack(cfg, members)
    for m in pack:
        say(f"beray: {'member ' + m.name + ': ' if m.name else ''}{m.cfg.method_summary()} on {cfg.data.dataset}, "
            f"{m.cfg.model.backbone} x{m.cfg.model.width}, {cfg.optim.epochs} epochs, {cfg.run.workers} worker(s)")
    directory = run_dir(cfg, name)
    try:
        info = fit(cfg, name, echo=True, members=members)
    except (ConfigError, DatasetError) as e:  # the user's data or storage; anything else is a bug: traceback
        say(f"error: {e}", error=True)
        return 2
    except FloatingPointError as e:  # the loss diverged: resuming would diverge again
        say(f"error: {e} in a new run (resume cannot change them: {directory} would diverge again)", error=True)
        return 1
    except DataStalled as e:  # the cluster is busy elsewhere: the same command can continue once it is not
        say(f"error: {e}", error=True)
        say(f"continue from the last checkpoint with: python -m beray.train --resume {directory}", error=True)
        return 1
    except TrainingFailedError as e:
        say(f"error: training failed after {cfg.run.max_failures} restart(s): {e}", error=True)
        say(f"continue from the last checkpoint with: python -m beray.train --resume {directory}", error=True)
        return 1
    except KeyboardInterrupt:
        say(f"\ninterrupted; continue with: python -m beray.train --resume {directory}", error=True)
        return 130
    m = info.metrics
    loss = f", loss {m.get('loss', float('nan')):.4f}" if "members" not in m else ""
    say(f"\ndone: {m.get('epoch')} epochs{loss}, {m.get('clips_per_s', 0):.1f} clips/s, "
        f"{m['skipped_total']} video(s) skipped")
    for member in pack:
        folder = st.join(info.dir, member.name) if member.name else info.dir
        last = m["members"].get(member.name) if member.name else m
        failed = (m.get("failed") or {}).get(member.name)
        if member.name:
            say(f"  member {member.name}: " + (f"failed: {failed}" if failed else f"loss {last['loss']:.4f}"))
        say(f"  run folder:  {folder} (python -m beray.eval ... --checkpoint {folder})")
    say(f"  checkpoint:  {info.checkpoint}")
    say(f"  config:      {st.join(info.dir, 'config.yaml')}")
    say(f"  TensorBoard: tensorboard --logdir {info.dir}")
    say(f"  resume:      python -m beray.train --resume {info.dir} --set optim.epochs=N")
    return 0


if __name__ == "__main__":
    sys.exit(main())
