"""The generated reference pages and the README's commands stay true to the code."""
from pathlib import Path

from pipelines import docs

ROOT = Path(__file__).resolve().parent.parent


def test_reference_pages_are_generated_from_schemas_and_settings():
    assert docs.main(["--check", str(ROOT / "docs")]) == 0


def test_ci_runs_the_readme_test_command():
    ci_command = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in l and not l.startswith("#")][0].strip()
    assert f"```bash\n{ci_command}\n```" in (ROOT / "README.md").read_text()
