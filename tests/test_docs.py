"""The generated reference pages and the README's commands stay true to the code."""
from pathlib import Path

from pipelines import docs

ROOT = Path(__file__).resolve().parent.parent


def test_reference_pages_are_generated_from_schemas_and_settings():
    assert docs.main(["--check", str(ROOT / "docs")]) == 0


def test_ci_runs_the_readme_test_command():
    ci_command = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in l and not l.startswith("#")][0].strip()
    assert f"```bash\n{ci_command}\n```" in (ROOT / "README.md").read_text()


DOCS = sorted((ROOT / "docs").glob("*.md"))


def test_the_architecture_page_names_only_files_that_exist():
    import re
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:core|schemas|models|transforms|pipelines|tests|benchmarks|runner_configs)/[\w/.-]+)`",
                           text))
    assert len(named) > 40
    assert sorted(p for p in named if not (ROOT / p).exists()) == []


def test_every_module_is_on_the_architecture_page():
    import subprocess
    text = (ROOT / "docs" / "architecture.md").read_text()
    tracked = subprocess.run(["git", "ls-files", "core", "schemas", "models", "transforms", "pipelines"], cwd=ROOT,
                             capture_output=True, text=True).stdout.split()
    modules = [p for p in tracked if p.endswith(".py") and not p.endswith("__init__.py")]
    assert sorted(p for p in modules if f"`{p}`" not in text) == []


def test_readme_and_docs_stand_alone():
    """Nothing points outside the repository; every relative link resolves."""
    import re
    for page in [ROOT / "README.md", *DOCS]:
        text = page.read_text()
        for outside in ("../shared", "FACTS.md", "seeds/"):
            assert outside not in text, f"{page.name} mentions {outside}"
        assert not re.search(r"\bissue \d+|\bstop \d+", text, re.IGNORECASE), page.name
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to {target}"


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 150
    assert [l for l in lines if len(l) > 120 and not l.startswith(".venv/bin/python -c")] == []
