#!/usr/bin/env python3
"""Bootstrap for a fresh clone: needs nothing but Python 3.11+.

    python3 dev.py serve [cronmon serve flags...]   run cronmon on config/ with the embedded Redis
    python3 dev.py test  [pytest args...]           run the whole test suite

Creates .venv/ on first use and reinstalls when pyproject.toml changes.
`test` also makes sure the Debian-packaged tools the end-to-end tests use
(prometheus and promtool from `prometheus`, Alertmanager and amtool from
`prometheus-alertmanager`, curl and wget as real clients, chromium for the
browser test) are installed, installing them with apt-get when running as
root; otherwise it says what to install and fails. Tests
are never skipped for a missing tool.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".cronmon-install-stamp"
# Debian packages the end-to-end tests need, by the command they provide.
SYSTEM_TOOLS = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    # Real clients the drop-in tests run as a migrated job would.
    "curl": "curl",
    "wget": "wget",
    # The status page's browser test (through playwright).
    "chromium": "chromium",
}


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):
        print(f"cronmon needs Python 3.11 or newer; this is {sys.version.split()[0]}", file=sys.stderr)
        return 2
    if not argv or argv[0] not in ("serve", "test"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    ensure_venv()
    if command == "serve":
        args = [str(BIN / "cronmon"), "serve", "--config", str(ROOT / "config"), *rest]
        os.execv(args[0], args)
    ensure_system_tools()
    result = subprocess.run([str(BIN / "python"), "-m", "pytest", *rest], cwd=ROOT)
    if result.returncode == 5:
        print("pytest collected no tests: that is a failure here", file=sys.stderr)
        return 1
    return result.returncode


def ensure_venv() -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        try:
            venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        except Exception as exc:  # Debian's python3 without python3-venv lands here
            print(
                f"cannot create a virtual environment ({exc}); on Debian/Ubuntu: apt-get install python3-venv",
                file=sys.stderr,
            )
            raise SystemExit(1) from None
    print("installing cronmon and its test dependencies into .venv ...", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(wanted + "\n")


def ensure_system_tools() -> None:
    missing = {tool: pkg for tool, pkg in SYSTEM_TOOLS.items() if shutil.which(tool) is None}
    if not missing:
        return
    packages = sorted(set(missing.values()))
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing Debian packages for the end-to-end tests: {' '.join(packages)}", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], check=True, env=env)
        return
    print(
        f"the end-to-end tests need {', '.join(missing)} (Debian packages: {' '.join(packages)}); "
        f"install them (as root: apt-get install {' '.join(packages)}) and run again",
        file=sys.stderr,
    )
    raise SystemExit(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
