"""The installed wheel: one top-level package, its data files, the CLI and the console run."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time
import zipfile
from pathlib import Path

from chronos.embedded import EmbeddedServer

from .conftest import WheelEnv


def test_wheel_installs_one_top_level_package_with_its_data_files(wheel_env: WheelEnv) -> None:
    names = zipfile.ZipFile(wheel_env.wheel).namelist()
    tops = {n.split("/")[0] for n in names if ".dist-info/" not in n}
    assert tops == {"chronos"}
    for needed in ("chronos/tui/app.tcss", "chronos/py.typed", "chronos/cli/main.py", "chronos/tui/app.py"):
        assert needed in names, needed


def test_cli_runs_from_the_wheel_with_no_project_folder(wheel_env: WheelEnv, tmp_path: Path) -> None:
    r = wheel_env.run([wheel_env.chronos, "--help"], cwd=tmp_path)
    assert r.returncode == 0 and "submit" in r.stdout, r.stderr
    probe = ("import chronos, chronos.tui.app, importlib.util as u; "
             "print(chronos.__file__); print(u.find_spec('cli'), u.find_spec('tui'))")
    r = wheel_env.run([wheel_env.python, "-c", probe], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    where, specs = r.stdout.splitlines()
    assert str(wheel_env.root) in where  # the wheel's copy, not this tree
    assert specs == "None None"
    check = wheel_env.run([wheel_env.python, "-m", "pip", "check"], cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr


def test_console_runs_headless_from_the_wheel(wheel_env: WheelEnv, nats_server: EmbeddedServer,
                                              namespace: str, tmp_path: Path) -> None:
    """`chronos tui` in a pseudo-terminal for a few seconds against a real server, then `q`."""
    init = wheel_env.run([wheel_env.chronos, "--server", nats_server.url, "--namespace", namespace, "admin", "init"],
                         cwd=tmp_path)
    assert init.returncode == 0, init.stdout + init.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen([wheel_env.chronos, "--server", nats_server.url, "--namespace", namespace, "tui"],
                            stdin=slave, stdout=slave, stderr=slave, cwd=tmp_path, start_new_session=True,
                            env=wheel_env.env(TERM="xterm-256color", COLUMNS="120", LINES="40"))
    os.close(slave)
    out = bytearray()

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    out.extend(os.read(master, 65536))
                except OSError:
                    return

    try:
        deadline = time.monotonic() + 30
        while len(out) < 4000 and proc.poll() is None and time.monotonic() < deadline:
            pump(0.2)  # the first screen painted (escape sequences split its words)
        assert len(out) >= 4000, out.decode(errors="replace")[-3000:]
        pump(2.0)  # a few seconds of live polling against the server
        assert proc.poll() is None, out.decode(errors="replace")[-3000:]
        os.write(master, b"q")
        proc.wait(timeout=15)
        pump(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
    text = out.decode(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert proc.returncode == 0


def test_every_package_folder_is_listed_in_pyproject() -> None:
    import tomllib

    root = Path(__file__).parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    dirs = {"chronos": root / "chronos", **{k: root / v for k, v in config["package-dir"].items()}}
    found = set()
    for base_name, base in (("chronos", root / "chronos"), ("chronos.cli", root / "cli"), ("chronos.tui", root / "tui")):
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([base_name, *rel.parts]))
    assert dirs and found - listed == set(), "add these to [tool.setuptools] packages"
