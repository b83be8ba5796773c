"""pyproject.toml, environment.yml, README.md and .ci/run agree: the same dependencies, the tested
Python and torch pins, and CI running the README's Linux install and test commands verbatim."""
import pathlib
import re

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = pathlib.Path(__file__).resolve().parents[1]
# What the README states as tested and CI installs (README "Install").
TESTED_PYTHON = "3.11"
TESTED_TORCH = "2.13.0"
CPU_INSTALL = f"pip install torch=={TESTED_TORCH} --index-url https://download.pytorch.org/whl/cpu"


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _environment() -> tuple[list[str], list[str]]:
    """environment.yml's conda dependencies and its pip requirements (pip options left out)."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    conda = [dep for dep in env["dependencies"] if isinstance(dep, str)]
    pip = [r for dep in env["dependencies"] if isinstance(dep, dict) for r in dep["pip"] if not r.startswith("-")]
    return conda, pip


def test_environment_yml_matches_pyproject():
    project = _project()
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    conda, pip = _environment()
    listed = {_name(r) for r in conda + pip} - {"python", "pip"}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"


def test_environment_yml_pins_the_tested_python_and_torch():
    conda, pip = _environment()
    assert f"python={TESTED_PYTHON}" in conda
    assert f"torch=={TESTED_TORCH}" in pip
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    pip_options = [r for dep in env["dependencies"] if isinstance(dep, dict) for r in dep["pip"] if r.startswith("--")]
    assert pip_options == ["--extra-index-url https://download.pytorch.org/whl/cpu"]  # Linux: the CPU build


def test_pyproject_python_and_torch_floors():
    project = _project()
    assert project["requires-python"] == ">=3.10"
    assert "torch>=2.2" in project["dependencies"]  # 2.2.2 is tested (unit tests; README "Install")
    assert project["name"] != "samlib"  # that PyPI name belongs to an unrelated project


def test_intel_macs_get_numpy_1():
    packaging = pytest.importorskip("packaging.requirements")
    numpy = [packaging.Requirement(r) for r in _project()["dependencies"] if _name(r) == "numpy"]
    base = {"python_version": "3.12", "implementation_name": "cpython"}
    intel_mac = {**base, "sys_platform": "darwin", "platform_machine": "x86_64", "platform_system": "Darwin"}
    arm_mac = {**intel_mac, "platform_machine": "arm64"}
    linux = {**base, "sys_platform": "linux", "platform_machine": "x86_64", "platform_system": "Linux"}

    def specifiers(environment):
        return {str(r.specifier) for r in numpy if r.marker is None or r.marker.evaluate(environment)}

    assert specifiers(intel_mac) == {"", "<2"}  # torch 2.2.2, the last for Intel Macs, needs NumPy 1
    assert specifiers(arm_mac) == specifiers(linux) == {""}


def test_readme_states_the_tested_versions():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"Python {TESTED_PYTHON}.7, torch {TESTED_TORCH} (CPU build)" in readme
    assert "any torch" not in readme.lower()  # an untested promise that was once there


def test_ci_runs_the_readme_install_and_test_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    linux = [CPU_INSTALL, 'pip install -e ".[dev]"']
    block = re.search(r"```bash\n" + re.escape("\n".join(linux)) + r"\n```", readme)
    assert block, "README lacks the Linux CPU install block that CI runs"
    ci_lines = [line.strip() for line in ci.splitlines()]
    assert all(line in ci_lines for line in linux), "CI does not run the README's Linux install verbatim"
    assert ci_lines.index(linux[0]) < ci_lines.index(linux[1])
    assert "python3 -m venv .venv" in ci_lines and "source .venv/bin/activate" in ci_lines
    assert re.search(r"^pytest$", readme, re.M) and re.search(r"^pytest$", ci, re.M)


def test_readme_gives_powershell_next_to_bash():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for bash_only in re.findall(r"`((?:SAMLIB_MODE|OMP_NUM_THREADS)=\w+ [^`]*)`", readme):
        variable, value = bash_only.split(" ", 1)[0].split("=")
        assert f'$env:{variable}="{value}"' in readme, f"no PowerShell form next to `{bash_only}`"
    for powershell in ("py -3.12 -m venv .venv", r".venv\Scripts\Activate.ps1"):
        assert powershell in readme
