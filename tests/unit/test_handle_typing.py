"""Task handles are typed for editors and type checkers: arguments from the function (ParamSpec),
results from its return annotation. Checked by running mypy on a small module."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

SNIPPET = textwrap.dedent('''
    import chronos

    @chronos.task(name="emails.send", queue="mail")
    async def send_email(to: str, subject: str) -> dict[str, str]:
        return {"sent": to}

    @chronos.task
    def double(x: int) -> int:
        return 2 * x

    async def main() -> None:
        job = await send_email.submit("a@example.com", subject="hi")
        reveal_type(await job.result())
        await send_email.submit(1, subject="hi")
        reveal_type(double.submit_sync(3).result())
        double.with_options(priority="high").submit_sync("x")
''')


def test_mypy_sees_the_arguments_and_the_result_type(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    (tmp_path / "snippet.py").write_text(SNIPPET)
    r = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-error-summary",
                        "--cache-dir", str(tmp_path / ".mypy_cache"), "snippet.py"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={"MYPYPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    lines = r.stdout.splitlines()
    assert any('Revealed type is "builtins.dict[builtins.str, builtins.str]"' in ln
               or 'Revealed type is "dict[str, str]"' in ln for ln in lines), r.stdout
    assert any('Revealed type is "builtins.int"' in ln or 'Revealed type is "int"' in ln for ln in lines), r.stdout
    assert any('incompatible type "int"; expected "str"' in ln for ln in lines), r.stdout
    assert any('incompatible type "str"; expected "int"' in ln for ln in lines), r.stdout
