"""``python -m beray.sweep SWEEP.yaml [--set key=value] [--resume] [--dry-run]``: a Ray Tune sweep of
pretraining runs, each scored by an evaluation; ``python -m beray.sweep report RESULTS_DIR`` prints and
writes its report again.

``--set`` reaches the sweep file's fields (``--set seeds=3``, ``--set search.samples=20``) and, through
``base.set.``, the run config of every trial (``--set base.set.data.dataset=synth``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from beray import console
from beray.console import say


def _dry_run(sweep) -> None:
    from beray.sweep.driver import results_dir, trial_resources
    from beray.sweep.progress import describe

    trials = sweep.validate_trials(check_paths=False)
    held, decode, gpus = trial_resources(sweep)
    r = sweep.resources
    cfg = sweep.run_config({}, 0, check_paths=False)
    say(f"sweep {sweep.name}: {sweep.search.algorithm} search, {sweep.scheduler.name} scheduler, "
          f"objective {sweep.eval.mode} {sweep.objective.metric} ({sweep.objective.mode}), seeds {sweep.seed_list}")
    say(f"base: {cfg.method_summary()} on {cfg.data.dataset} "
          f"({cfg.data.root or 'generated'}), {cfg.model.backbone} x{cfg.model.width}, {cfg.optim.epochs} epochs")
    say(f"each trial: {r.workers} Train worker(s) x ({r.cpus_per_worker} CPU"
          + (f", {r.gpus_per_worker} GPU" if r.gpus_per_worker else "") + f"), holding {held:g} CPU(s)"
          + (f" and {gpus:g} GPU(s)" if gpus else "")
          + f" plus room for {r.decode_tasks} decode task(s) of {decode:g} CPU(s)")
    _dry_bound(sweep, (len(sweep.packs(trials)) if sweep.packed else len(trials)) if trials
               else sweep.search.samples * len(sweep.seed_list))
    if cfg.data.root and not os.path.exists(os.path.expanduser(cfg.data.root)):
        say(f"note: data.root {cfg.data.root} is not on this machine; it must be where the sweep runs")
    if trials:
        say(f"\n{len(trials)} trial(s):")
        for i, (point, seed, _) in enumerate(trials, 1):
            say(f"  {i:>3}  {describe(point, seed)}")
        _dry_packs(sweep, trials)
    else:
        say(f"\n{sweep.search.samples} point(s) chosen by Optuna TPE, each with {len(sweep.seed_list)} seed(s); "
              "every listed value and both ends of every range make a valid run; Optuna chooses each point "
              "after the last results, so its trials are not packed")
    say(f"\nresults: {results_dir(sweep)} (no Ray started)")


def _dry_bound(sweep, jobs: int) -> None:
    """How many jobs would run at once and why: on the cluster of ``RAY_ADDRESS`` (joined, nothing started),
    else on the local Ray a sweep would start here."""
    from beray.sweep.driver import concurrency, max_concurrent

    if sweep.resources.max_concurrent or os.environ.get("RAY_ADDRESS"):
        if not sweep.resources.max_concurrent:
            from beray.runtime import init_ray

            init_ray(log_to_driver=False)
        bound, why = concurrency(sweep, jobs)
        say(f"at most {bound} job(s) at once: {why}")
        return
    here = max_concurrent(sweep, [{"CPU": os.cpu_count() or 1}])
    say(f"at most {here} job(s) at once on the Ray a sweep starts on this machine ({os.cpu_count()} CPUs); on a "
        "cluster (RAY_ADDRESS), what it holds at its largest where an autoscaler runs (its node types' "
        "max_workers), else what its nodes alive at the start hold; resources.max_concurrent sets it")


def _dry_packs(sweep, trials) -> None:
    """The packs the trials group into, their members and the model state a worker holds for them."""
    from beray.sweep.progress import describe
    from beray.train.pack import model_state_bytes

    if not sweep.packed:  # Optuna's trials are not listed here: only ASHA or pack: false leave packing off
        why = "pack: false" if sweep.pack is False else "scheduler asha (it stops single trials at its rungs)"
        say(f"\n{why}: every trial runs as its own job")
        return
    packs = sweep.packs(trials)
    sizes: dict = {}
    say(f"\n{len(packs)} pack(s) of at most {sweep.pack_size} (pack_size): the members of a pack share their seed "
        "and every setting the pipeline reads, and train as one Ray Train job on one decoded stream")
    for i, pack in enumerate(packs, 1):
        state = sum(sizes.setdefault(repr(c.model.model_dump()) + repr(c.method.model_dump()) + c.optim.name,
                                     model_state_bytes(c)) for _, _, c in pack)
        say(f"  pack {i}: {len(pack)} member(s), model and optimiser state ~{state / 2**20:.0f} MiB per worker "
            "(plus one member's activations)")
        for point, seed, _ in pack:
            say(f"    {describe(point, seed)}")


def _generate_synth(sweep, configs) -> None:
    """Generate each copy of BackgroundBias-Synth the trials read, once, here, with its progress bar,
    before Ray starts: otherwise every concurrent trial would generate it again (one copy wins)."""
    from beray.data.synth import ensure_synth, synth_config

    wanted = {}
    for cfg in [sweep.run_config({}, sweep.seed_list[0]), *configs]:
        if cfg.data.dataset == "synth" and cfg.data.root is None:
            wanted[repr(sorted((cfg.data.synth or {}).items()))] = cfg.data.synth
    for options in wanted.values():
        ensure_synth(synth_config(options))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from beray.config import ConfigError

    if argv[:1] == ["report"]:
        p = argparse.ArgumentParser(prog="python -m beray.sweep report", description="print and write a sweep's report")
        p.add_argument("results", help="the sweep's results directory (STORAGE/NAME)")
        args = p.parse_args(argv[1:])
        from beray.sweep.report import write_report

        from beray import storage as st

        try:
            if st.kind(st.join(st.resolve(args.results), "sweep.yaml")) != "file":
                say(f"error: {args.results} is not a sweep's results directory (no sweep.yaml)", error=True)
                return 2
            say(write_report(args.results))
        except st.FAILURES as e:
            say(f"error: cannot read or write the report in {args.results}: {e}", error=True)
            return 2
        return 0
    p = argparse.ArgumentParser(prog="python -m beray.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="sweep file (see sweeps/), or 'report RESULTS_DIR'")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the sweep file; base.set.a.b=c reaches every trial's run config")
    p.add_argument("--resume", action="store_true", help="continue a sweep whose driver stopped")
    p.add_argument("--dry-run", action="store_true", help="validate and list the trials; start nothing")
    p.add_argument("--verbose", action="store_true", help="show Ray's own output live (default: RESULTS/ray.log)")
    args = p.parse_args(argv)
    from beray.sweep.spec import load_sweep

    with console.session("sweep", args.verbose) as session:  # the error lines before the log's name
        try:
            sweep = load_sweep(args.sweep, args.overrides)
            if args.dry_run:
                _dry_run(sweep)
                return 0
            trials = sweep.validate_trials()  # every trial's config, data root included, before Ray starts
            _generate_synth(sweep, [cfg for _, _, cfg in trials])
            from beray.sweep.driver import results_dir, run_sweep

            session.log_in(results_dir(sweep))
            say(run_sweep(sweep, resume=args.resume))
        except ConfigError as e:
            say(f"error: {e}", error=True)
            return 2
        except ConnectionError as e:  # RAY_ADDRESS names no cluster this process can join
            say(f"error: cannot join the Ray cluster of RAY_ADDRESS={os.environ.get('RAY_ADDRESS')}: "
                f"{str(e).splitlines()[0]} (with token authentication, also RAY_AUTH_MODE=token)", error=True)
            return 2
        except KeyboardInterrupt:
            again = shlex.join([args.sweep, *(x for o in args.overrides for x in ("--set", o)), "--resume"])
            say(f"\ninterrupted; continue with: python -m beray.sweep {again}", error=True)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
