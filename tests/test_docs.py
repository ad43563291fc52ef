"""The README's generated parts and commands stay true to the code."""
from pathlib import Path

from schemas import docs

ROOT = Path(__file__).resolve().parent.parent


def test_readme_column_reference_is_generated_from_schemas():
    assert docs.main(["--check", str(ROOT / "README.md")]) == 0


def test_ci_runs_the_readme_test_command():
    ci_command = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in l and not l.startswith("#")][0].strip()
    assert f"```bash\n{ci_command}\n```" in (ROOT / "README.md").read_text()
