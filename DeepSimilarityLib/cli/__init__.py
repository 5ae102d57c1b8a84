"""The ``deepsim`` command line.

Each capability adds its subcommands from its own module (``register_parser``
functions below); this file only assembles them and turns user errors into
one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError
from . import demo, evaluate, imaging, retrieval, similarity, train

EXIT_USAGE = 2
EXIT_CANCELLED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepsim",
        description="Learned similarity of medical images: CT/MR patch similarity heat maps, "
                    "DeepSim registration, Siamese and hashing case retrieval.",
    )
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {__import__('DeepSimilarityLib').__version__}")
    parser.add_argument("--progress-json", action="store_true",
                        help="report progress as JSON lines on stdout ({\"progress\": fraction, ...}) instead of "
                             "bars on stderr, for programs running deepsim (e.g. the Slicer module)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (demo, imaging, similarity, train, evaluate, retrieval):
        module.register_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..progress import set_json_progress

    set_json_progress(args.progress_json)
    try:
        result = args.func(args)
    except InputError as exc:
        # one line, whatever a library message carries (e.g. an underlying error's multi-line text)
        print("deepsim: error: " + " ".join(str(exc).split()), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("deepsim: cancelled; nothing partial was written", file=sys.stderr)
        return EXIT_CANCELLED
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
