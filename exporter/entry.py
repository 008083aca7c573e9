"""The `cronmon` command's entry point. `cronmon exec` wraps every run of a
job, so it starts without the server's imports (pydantic, redis, aiohttp,
the config models: half a second a run); every other command goes to
cli.main, which builds the whole parser (`exec` included, for --help)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["exec"]:
        from . import runner

        parser = argparse.ArgumentParser(prog="cronmon")
        runner.add_parser(parser.add_subparsers(dest="command", required=True))
        return runner.main(parser.parse_args(argv))
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
