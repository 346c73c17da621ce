"""The documentation stays true: the example config is valid, every metric is documented."""

from __future__ import annotations

from pathlib import Path

from sidecar.cli import main
from sidecar.ops.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_is_valid(capsys):
    assert main(["check-config", str(ROOT / "examples" / "sidecar.yaml")]) == 0
    assert "payments  team-payments  fail_closed" in capsys.readouterr().out


def test_every_metric_is_documented_in_the_operations_page(tmp_path):
    """Every metric of a whole sidecar (classes, schedule and scrape-time collectors included)."""
    from prometheus_client import CollectorRegistry

    from sidecar.app import create_app
    from tests.conftest import config, settings_from

    token = tmp_path / "store-token"
    token.write_text("s.not-used")
    document = config("http://127.0.0.1:1", token, tmp_path, revocation_list="secret/rl")
    document["snapshot"] = {"path": str(tmp_path / "snap"), "key_file": str(tmp_path / "key")}
    (tmp_path / "key").write_bytes(bytes(range(32)))
    registry = CollectorRegistry()
    create_app(
        settings_from(document), registry=registry, caller_token="c" * 20, admin_token="a" * 20
    )
    readme = (ROOT / "docs" / "operations.md").read_text()
    names = set()
    for family in [*Metrics().registry.collect(), *registry.collect()]:
        name = family.name
        if family.type == "counter":
            name += "_total"
        elif family.type == "info":
            name += "_info"
        names.add(name)
    assert names, "no metrics collected"
    missing = sorted(n for n in names if f"`{n}`" not in readme)
    assert not missing, f"undocumented metrics: {missing}"


def test_the_readme_production_config_is_valid(tmp_path):
    """The minimal production configuration in the README loads (its files are checked where
    it runs, with --files)."""
    import re

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"^```yaml\n(.*?)^```", readme, re.M | re.S)
    assert block is not None, "the README shows no production config"
    path = tmp_path / "sidecar.yaml"
    path.write_text(block.group(1))
    assert main(["check-config", str(path)]) == 0


def test_readme_shows_the_two_setup_commands_and_ci_runs_make_test():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_test_named_in_the_security_page_exists():
    """docs/security.md names the tests behind each control: they must exist."""
    import re

    page = (ROOT / "docs" / "security.md").read_text()
    defined = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.M))
    named = set(re.findall(r"\b(test_\w+\*?)", page))
    named = {n for n in named if not n.endswith(".py")}
    missing = sorted(
        n
        for n in named
        if (n.endswith("*") and not any(d.startswith(n[:-1]) for d in defined))
        or (not n.endswith("*") and n not in defined and f"{n}.py" not in page)
    )
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"
    files = set(re.findall(r"tests/([\w/]+\.py)", page))
    assert files, "the page names no test files: is the pattern still right?"
    assert all((ROOT / "tests" / f).exists() for f in files), files


def test_relative_links_between_pages_resolve():
    """A link from one page to a file of the repository (docs moved between pages) points at
    something that exists; an anchor, at a heading of that page."""
    import re

    pages = [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "docs" / "runbooks").glob("*.md")),
        ROOT / "charts" / "secrets-sidecar" / "README.md",
    ]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
                slugs = {
                    re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings
                }
                if anchor not in slugs:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []
