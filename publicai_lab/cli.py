"""``publicai-lab <command>``: a thin layer over the library.

Every deliberate error (bad scenario, unknown policy, …) is printed as one line on stderr and the
exit status is 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Sequence

from publicai_lab.errors import PublicAILabError

__all__ = ["main"]


def _cmd_simulate(args: argparse.Namespace) -> int:
    from publicai_lab.scenario import load_scenario
    from publicai_lab.sim import simulate

    scenario = load_scenario(args.scenario)
    result = simulate(scenario, seed=args.seed, policy=args.policy, requests=args.requests,
                      horizon_s=args.horizon_s, progress=None if not args.quiet else False)
    summary = result.summary()
    out = Path(args.out)
    path = result.report(str(out))
    overall = summary.loc["ALL"]
    print(f"{result!r}")
    print(f"simulated {len(result.requests):,} requests in {result.wall_s:.1f} s wall "
          f"({len(result.requests) / max(result.wall_s, 1e-9):,.0f} req/s); "
          f"E2E p50 {overall['e2e_p50_s']:.2f} s, p99 {overall['e2e_p99_s']:.2f} s; "
          f"SLO attainment {overall['slo_attainment']:.1%}")
    print(f"report: {path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from publicai_lab.analysis import report_from_dir

    path = report_from_dir(args.run_dir, args.out)
    print(f"report: {path}")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from publicai_lab.scenario import scenario_json_schema

    print(json.dumps(scenario_json_schema(), indent=2))
    return 0


def _cmd_policies(args: argparse.Namespace) -> int:
    from publicai_lab import policies

    for name in policies.available():
        cls = type(policies.get(name))
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"{name:18s} {doc[0] if doc else ''}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from publicai_lab.scenario import load_scenario

    for path in args.scenarios:
        s = load_scenario(path)
        n = sum(c.replicas for _, c in s.clusters())
        print(f"{path}: ok ({len(s.partners)} partners, {len(s.clusters())} clusters, {n} replicas)")
    return 0


#: commands living in their own modules: name -> (module registering it with ``add_cli``, one-line
#: help). They are imported only when asked for, so the core install (no web server, no vLLM)
#: stays light and the CLI starts fast.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "plan": ("publicai_lab.analysis.plan", "fewest replicas per cluster that hold the SLO at a load"),
    "import-litellm": ("publicai_lab.importers", "turn a LiteLLM proxy config into a scenario skeleton"),
    "tiny-model": ("publicai_lab.live.tiny_model", "build the small random-weight Llama used offline"),
    "backend": ("publicai_lab.live.backends", "launch a real vLLM OpenAI-compatible server"),
    "gateway": ("publicai_lab.live.gateway", "run the OpenAI-compatible gateway with a routing policy"),
    "emulate": ("publicai_lab.live.emulator", "serve emulated vLLM backends timed by the replica model"),
    "loadgen": ("publicai_lab.live.loadgen", "replay a scenario's workload against a live endpoint"),
    "calibrate": ("publicai_lab.live.calibrate", "fit the perf model's coefficients to a live vLLM server"),
    "compare": ("publicai_lab.analysis.compare", "run one workload in the simulator and live; error table"),
}


def _add_lazy_commands(sub: argparse._SubParsersAction, wanted: str | None) -> None:
    for name, (module, help_text) in LAZY_COMMANDS.items():
        if name != wanted:
            sub.add_parser(name, help=help_text, description=f"{help_text} (publicai-lab {name} --help)")
            continue
        try:
            importlib.import_module(module).add_cli(sub)
        except ImportError as exc:
            raise PublicAILabError(
                f"`publicai-lab {name}` needs optional packages: pip install 'publicai-lab[live]' "
                f"(missing module {exc.name!r})") from None


def build_parser(wanted: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="publicai-lab",
        description="Simulate, run live and compare federated LLM inference (Public AI).",
        epilog="Example: publicai-lab simulate scenarios/publicai-2025.yaml --policy least_kv --out out/run1")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simulate", help="run a scenario in the simulator and write a report",
                       description="Run SCENARIO in the SimPy model of the federation; write report.md, "
                                   "PNG figures and the records (Parquet) to --out.")
    s.add_argument("scenario", help="scenario YAML file (see `publicai-lab schema`)")
    s.add_argument("--policy", help="routing policy by name (default: the scenario's; "
                                    "see `publicai-lab policies`)")
    s.add_argument("--seed", type=int, help="random seed (default: the scenario's)")
    lim = s.add_mutually_exclusive_group()
    lim.add_argument("--requests", type=int, help="stop after this many requests (overrides the scenario)")
    lim.add_argument("--horizon-s", type=float, dest="horizon_s",
                     help="simulate this many seconds (overrides the scenario)")
    s.add_argument("--out", required=True, help="output directory for the report and records")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_simulate)

    r = sub.add_parser("report", help="rebuild a report from a run directory",
                       description="Rebuild report.md and figures from RUN_DIR (requests.parquet, "
                                   "replicas.parquet, backends.parquet, run.json).")
    r.add_argument("run_dir", help="directory written by `simulate --out`")
    r.add_argument("--out", help="write the report here instead of RUN_DIR")
    r.set_defaults(func=_cmd_report)

    sc = sub.add_parser("schema", help="print the scenario JSON Schema")
    sc.set_defaults(func=_cmd_schema)

    po = sub.add_parser("policies", help="list the built-in routing policies")
    po.set_defaults(func=_cmd_policies)

    v = sub.add_parser("validate", help="check scenario files and exit (status 2 on the first error)")
    v.add_argument("scenarios", nargs="+")
    v.set_defaults(func=_cmd_validate)

    _add_lazy_commands(sub, wanted)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(wanted)
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            if not getattr(args, "pass_unknown_args", False):
                parser.error(f"unrecognized arguments: {' '.join(unknown)}")
            args.unknown_args = unknown
        return int(args.func(args) or 0)
    except PublicAILabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
