"""README.md and .ci/run must agree on the test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text):
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_shows_exactly_two_setup_commands():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    assert len(blocks) == 2
    main_job, tests = blocks
    for command in blocks:
        assert "pip install torch==2.13.0" in command or "pip install -q torch==2.13.0" in command
        assert command.index("torch==2.13.0") < command.index('".[')  # torch first: the CPU build
    assert main_job.endswith("clvq demo")
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    tests = _bash_blocks((ROOT / "README.md").read_text())[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci
