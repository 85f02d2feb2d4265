"""Versions live in one place: pyproject.toml. The other set-up files must agree with it."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(d.split("==") for d in deps if "==" in d)


def test_every_dependency_is_pinned():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all("==" in d for d in deps), [d for d in deps if "==" not in d]


def test_environment_yml_agrees_with_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    pins = _pins()
    for line in pip:
        if "==" in line:
            name, version = line.split("==")
            assert pins[name] == version, f"environment.yml pins {line}, pyproject {pins.get(name)}"
    assert "-e .[dev]" in pip
    assert any(d.startswith("python=3.11") for d in env["dependencies"] if isinstance(d, str))


def test_setup_script_installs_the_same_torch_pair():
    script = (ROOT / "scripts" / "env.sh").read_text()
    pins = _pins()
    for name in ("torch", "torchvision"):
        found = re.findall(rf"\b{name}==([\d.]+)", script)
        assert found and set(found) == {pins[name]}, (name, found)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make workbook" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
