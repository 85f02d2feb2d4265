"""Versions live in one place: pyproject.toml. The other set-up files must agree with it."""

import re
import tomllib
from pathlib import Path

import pytest
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


@pytest.mark.integration
def test_wheel_installs_and_loads_the_default_model(tmp_path):
    """Built as a wheel and installed into a scratch venv (no source tree in sight), the package
    finds its shipped data and notebooks and runs the default model."""
    import os
    import subprocess
    import sys
    import sysconfig
    import venv

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(wheels)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("ltcutils-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies come from this environment; a .pth line adds its site-packages after the
    # scratch venv's own (and does not activate its editable install of ltcutils)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing may shadow the install
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
                    "--force-reinstall", str(wheel)], check=True, cwd=tmp_path, env=clean)
    probe = (
        "import ltcutils, torch\n"
        "from ltcutils import resources, text, workbook\n"
        "from ltcutils.models import load_default\n"
        "print(ltcutils.__file__)\n"
        "print(resources.data_dir())\n"
        "print(len(workbook.list_notebooks(resources.notebooks_dir())))\n"
        "m = load_default()\n"
        "bank = text.load_prompt_bank('synthetic')\n"
        "s = m.hooked.cfg.image_size\n"
        "emb = m.clip.encode_image(torch.zeros(1, 3, s, s))\n"
        "print(tuple(emb.shape))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    out = subprocess.run([py, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith(str(site)), lines
    assert lines[1] == str(site / "ltcutils" / "_data"), lines
    assert int(lines[2]) == len(list((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))) > 0
    assert lines[3].startswith("(1, "), lines
