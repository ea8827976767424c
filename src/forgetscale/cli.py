"""The ``forgetscale`` command line: one subcommand per pipeline step.

Each subcommand lives in :mod:`forgetscale.commands` as a module that defines
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. This file
only parses, dispatches and turns :class:`~forgetscale.errors.UserError` into one
line on stderr and exit code 2. Adding a command is one module plus one entry in
``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from forgetscale import __version__
from forgetscale.errors import UserError

# Order = the pipeline's order; this is also the order `forgetscale --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "reference",
    "measure",
    "evaluate",
    "train",
    "sweep",
    "runs",
    "export",
    "fit",
    "predict",
    "plan",
    "compare",
    "study",
)

DESCRIPTION = """\
forgetscale measures how much a language model forgets when it is fine-tuned,
fits the scaling laws of forgetting (Kalajdzievski, arXiv 2401.05605) to your
runs, and predicts forgetting before you spend the compute.

pipeline:  reference -> measure | train/sweep -> runs/export -> fit -> predict/plan/compare
the main job in one command:  study (runs, laws tested on runs they never saw, report.html)
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (exit code 2), like every other
    error of the command line; the full usage is one ``--help`` away. Subcommand parsers
    are of this class too (``add_subparsers`` makes them with the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="forgetscale",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"forgetscale {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show library logs and full tracebacks"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parser.command_parsers = {}  # type: ignore[attr-defined]
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(f"forgetscale.commands.{module_name}")
        p = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
        parser.command_parsers[module.NAME] = p  # type: ignore[attr-defined]
    return parser


def _quiet_libraries() -> None:
    import warnings

    # deprecation notices of the libraries (transformers v5 renames) are not the user's business
    for module in ("transformers", "peft", "torch"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # read when transformers is imported (commands that never load a model, such as a sweep's
    # driver, then never import it); transformers' progress bars are the hub's
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported already (the CLI called from Python)
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the command's own usage error: `forgetscale COMMAND: error: ...`
        parser.command_parsers[args.command].error(  # type: ignore[attr-defined]
            f"unrecognized arguments: {' '.join(unknown)}"
        )
    args._argv = list(sys.argv[1:] if argv is None else argv)  # for a report to say how it ran
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        _quiet_libraries()
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        if args.verbose:
            raise
        print(f"forgetscale {args.command}: error: {exc}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print(f"forgetscale {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `forgetscale runs | head`: the reader left, nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
