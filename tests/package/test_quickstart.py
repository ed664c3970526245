"""The README's quick start, verbatim, from the installed wheel against a real server.

The code blocks are taken out of README.md by their first line (``# tasks.py``...) and the
commands from its shell blocks, so the README cannot drift from what works.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from chronos.embedded import EmbeddedServer

from .conftest import ROOT, WheelEnv


def readme_blocks() -> tuple[dict[str, str], list[str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Quick start")
    section = text[start:text.index("\n## ", start + 5)]
    files: dict[str, str] = {}
    commands: list[str] = []
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, re.S):
        first = body.splitlines()[0]
        if lang == "python" and first.startswith("# ") and first.endswith(".py"):
            files[first[2:].strip()] = body
        elif lang == "sh":
            commands += [line.split("#")[0].strip() for line in body.splitlines() if line.strip()]
    return files, commands


def test_readme_quick_start_runs_as_written(wheel_env: WheelEnv, nats_server: EmbeddedServer,
                                            namespace: str, tmp_path: Path) -> None:
    files, commands = readme_blocks()
    assert {"tasks.py", "submit.py", "submit_sync.py"} <= set(files)
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    env = {"CHRONOS_SERVER": nats_server.url, "CHRONOS_NAMESPACE": namespace}
    worker_cmd = next(c for c in commands if c.startswith("chronos serve worker"))
    assert worker_cmd == "chronos serve worker --tasks tasks"
    worker = subprocess.Popen(worker_cmd.split(), cwd=tmp_path, env=wheel_env.env(**env), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(iter(worker.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not any("serving" in line for line in log):
            assert worker.poll() is None and time.monotonic() < deadline, "".join(log)
            time.sleep(0.05)
        serving = next(line for line in log if "serving" in line)
        assert "emails.send" in serving and "reports.build" in serving and "mail" in serving, serving
        after = commands[commands.index(worker_cmd) + 1:]
        runs = [c for c in after if c.startswith("python ") or c.startswith("chronos jobs")]
        assert runs[:2] == ["python submit.py", "python submit_sync.py"]
        outputs = []
        for cmd in runs:
            r = wheel_env.run(cmd.split(), cwd=tmp_path, timeout=90, **env)
            assert r.returncode == 0, f"{cmd}: {r.stdout}{r.stderr}"
            outputs.append(r.stdout)
        assert "{'sent': 'a@example.com', 'subject': 'hi'}" in outputs[0]
        assert "report for 2026-11-23" in outputs[0]
        assert "{'sent': 'b@example.com', 'subject': 'hello'}" in outputs[1]
        assert outputs[2].count("completed") >= 2
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        reader.join(5)
    assert "Traceback" not in "".join(log), "".join(log)


def test_worker_with_tasks_that_add_nothing_refuses_with_one_line(wheel_env: WheelEnv, nats_server: EmbeddedServer,
                                                                  namespace: str, tmp_path: Path) -> None:
    (tmp_path / "empty.py").write_text("VALUE = 1\n")
    r = wheel_env.run(["chronos", "serve", "worker", "--tasks", "empty"], cwd=tmp_path,
                      CHRONOS_SERVER=nats_server.url, CHRONOS_NAMESPACE=namespace)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "defines no @chronos.task" in lines[0], r.stderr
