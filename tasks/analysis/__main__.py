"""Command line of the analyses: ``python -m tasks.analysis <name> [--out DIR] [options]``.

``python -m tasks.analysis --help`` lists the names; ``python -m tasks.analysis <name> --help`` their
options. Exit status 0 on success, 2 for bad arguments.
"""
import argparse
import sys

from . import ANALYSES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks.analysis", description="The paper's analyses as figures.")
    sub = p.add_subparsers(dest="name", required=True, metavar="name")
    for name, module in ANALYSES.items():
        doc = " ".join(module.__doc__.strip().split("\n\n")[0].split())  # the first paragraph
        q = sub.add_parser(name, help=doc, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("--out", help=f"output folder (default runs/analysis/{name})")
        module.add_arguments(q)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ANALYSES[args.name].run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
