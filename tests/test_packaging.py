"""What users install: the wheel and sdist carry the operator files, the license, the tests."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
from prom_harness import check_rules, require_binary

from loopwatch import _integrations
from loopwatch.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_export_writes_every_operator_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["integrations", "export", str(tmp_path / "ops")]) == 0
    printed = capsys.readouterr().out.split()
    for name in _integrations.FILES:
        written = tmp_path / "ops" / name
        assert str(written) in printed
        assert filecmp.cmp(written, ROOT / "integrations" / name, shallow=False), name


def test_export_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alerts = tmp_path / "prometheus" / "alerts.yml"
    alerts.parent.mkdir()
    alerts.write_text("mine\n")
    assert main(["integrations", "export", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "would overwrite" in err and "alerts.yml" in err and "--force" in err
    assert alerts.read_text() == "mine\n"
    assert main(["integrations", "export", "--force", str(tmp_path)]) == 0
    assert alerts.read_bytes() == (ROOT / "integrations/prometheus/alerts.yml").read_bytes()


def _clean_checkout(tmp_path: Path) -> Path:
    """The committed tree (plus uncommitted edits of tracked files), without build leftovers."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode().split("\0")
    checkout = tmp_path / "checkout"
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, checkout / name)
    return checkout


def _build(checkout: Path, kind: str, out: Path) -> Path:
    # pip builds in an isolated environment with the declared build backend (hatchling).
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(checkout)]
    if kind == "sdist":
        cmd = [sys.executable, "-c",
               "import sys, hatchling.build as b; print(b.build_sdist(sys.argv[1]))", str(out)]
        subprocess.run(cmd, cwd=checkout, check=True, capture_output=True)
        return next(out.glob("*.tar.gz"))
    subprocess.run(cmd, check=True, capture_output=True)
    return next(out.glob("*.whl"))


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_exports_files_promtool_accepts(tmp_path: Path) -> None:
    wheel = _build(_clean_checkout(tmp_path), "wheel", tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    for name in _integrations.FILES:
        assert f"loopwatch/integrations/{name}" in names
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True,
                   capture_output=True)
    out = tmp_path / "exported"
    # Run from outside any source tree, so only the installed package can answer.
    done = subprocess.run([env / "bin" / "loopwatch", "integrations", "export", str(out)],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in _integrations.FILES:
        assert (out / name).is_file(), name
    require_binary("promtool")
    check_rules(out / "prometheus" / "alerts.yml")


@pytest.mark.slow
def test_sdist_carries_what_the_tests_read(tmp_path: Path) -> None:
    pytest.importorskip("hatchling")
    sdist = _build(_clean_checkout(tmp_path), "sdist", tmp_path / "dist")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tar.extractall(tmp_path / "unpacked", filter="data")
    for needed in ("LICENSE", "tests/conftest.py", "examples/fastapi_app.py", "mkdocs.yml",
                   *(f"integrations/{n}" for n in _integrations.FILES)):
        assert needed in names, needed
    # The sdist's own static checks of the operator files pass from the sdist.
    tree = next((tmp_path / "unpacked").iterdir())
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_packaging.py::test_export_writes_every_operator_file",
         "tests/test_integrations.py::test_dashboard_is_well_formed",
         "tests/test_integrations.py::test_integrations_name_only_exported_metrics"],
        cwd=tree, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_version_is_the_newest_release_of_the_changelog() -> None:
    import re

    import loopwatch

    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert releases and releases[0] == loopwatch.__version__
