"""The built wheel, installed (not editable) into a fresh virtual environment, runs every stage.

An editable install and a checkout on sys.path hide packaging mistakes: a module left out of the wheel, a
file read from the source tree (the demo once loaded data/bbc/prepare.py by path), a console script that
points at a package that is not installed. Here the wheel is built, installed with --no-deps into a new
venv whose dependencies come from this environment's site-packages (a .pth line: no network, seconds),
and the commands run from a directory outside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from helpers.assets import make_teacher, write_dataset

REPO = Path(__file__).resolve().parents[2]


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("wheel")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    # Built from a copy of the checkout's files: setuptools' build/ folder in a working tree keeps files of
    # deleted modules, which would then ship in the wheel and hide a missing one.
    source = work / "source"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.split()
    for relative in listed:
        if (REPO / relative).is_file():
            (source / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / relative, source / relative)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work / "dist"),
          str(source)], work, env)
    wheel = next((work / "dist").glob("mtkd_cache-*.whl"))
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], work, env)
    purelib = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    # Dependencies from this environment; the editable install's own .pth is not processed from there.
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], work, env)
    return {"wheel": wheel, "python": python, "bin": venv / "bin", "work": work, "env": env}


@pytest.mark.slow
def test_the_wheel_holds_every_package_and_no_top_level_cli(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"mtkd_cache", "mtkd_cache_cli"}
    for module in ("mtkd_cache/demo/bbc.py", "mtkd_cache/runners/base.py", "mtkd_cache/cache/manifest.py",
                   "mtkd_cache_cli/app.py"):
        assert module in names
    where = _run([str(installed["python"]), "-c", "import mtkd_cache, mtkd_cache_cli; print(mtkd_cache.__file__)"],
                 installed["work"], installed["env"]).stdout.strip()
    assert str(REPO) not in where and "site-packages" in where
    missing = subprocess.run([str(installed["python"]), "-c", "import cli"], cwd=installed["work"],
                             env=installed["env"], capture_output=True, text=True)
    assert missing.returncode != 0 and "No module named 'cli'" in missing.stderr


@pytest.mark.slow
def test_the_installed_commands_build_and_distill(installed):
    work, env, command = installed["work"], installed["env"], str(installed["bin"] / "mtkd-cache")
    assert "--per-class" in _run([command, "demo", "--help"], work, env).stdout
    data = write_dataset(work / "data", sizes=(("train", 24), ("test", 12)))
    teacher = make_teacher(work / "teacher")
    cache = work / "cache"
    _run([command, "build", "--dataset", str(data), "--teacher", f"bert={teacher}", "--out", str(cache),
          "--device", "cpu"], work, env)
    run = work / "run"
    _run([command, "distill", str(cache), "--student", "bilstm:embed=16,hidden=16", "--tokenizer", str(teacher),
          "--strategy", "average", "--epochs", "1", "--out", str(run), "--device", "cpu"], work, env)
    report = json.loads((run / "report.json").read_text())
    assert 0.0 <= report["accuracy"] <= 1.0
    info = _run([str(installed["python"]), "-m", "mtkd_cache", "info", str(cache), "--json"], work, env).stdout
    assert json.loads(info)["teachers"][0]["name"] == "bert"
