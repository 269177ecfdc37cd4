"""The built wheel, installed into a fresh virtual environment, adds one name to site-packages (``cvgl``)
and runs the README's Python API example and the ``pipeline`` command from a folder holding research
code with its own ``configs``, ``cache`` and ``pipeline`` modules, which keep working beside it."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What the wheel needs from the source tree: the package and the files pyproject.toml names.
_NOT_PACKAGED = ("tests", "benchmarks", "docs", "build", "dist", "runs", "*.egg-info", "__pycache__", ".*")


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_beside_research_code(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIPELINE_CACHE_DIR")}
    env["OMP_NUM_THREADS"] = "1"

    # Build from a copy of the source, so the build leaves nothing in the checkout.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*_NOT_PACKAGED))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src)],
         tmp_path, env)
    [wheel] = wheels.glob("*.whl")

    # A fresh venv. Its dependencies (torch and the rest) come from this interpreter's site-packages
    # through a .pth file, which only appends those folders to sys.path: the .pth files inside them
    # (such as an editable install of this checkout) are not run, so `cvgl` can only come from the wheel.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    vpy = venv / "bin" / "python"
    purelib = Path(_run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        tmp_path, env).stdout.strip())
    deps = [p for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (purelib / "zz_test_dependencies.pth").write_text("".join(f"{p}\n" for p in dict.fromkeys(deps)))
    before = set(os.listdir(purelib))
    _run([str(vpy), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp_path, env)
    added = set(os.listdir(purelib)) - before - {"__pycache__"}
    assert {n for n in added if not n.endswith(".dist-info")} == {"cvgl"}, sorted(added)
    assert len([n for n in added if n.endswith(".dist-info")]) == 1, sorted(added)
    assert (purelib / "cvgl" / "configs" / "demo.yaml").is_file()  # shipped configs travel in the wheel

    # Research code with modules named like the package's floors, in the folder the example runs from.
    work = tmp_path / "research"
    for name in ("configs", "cache"):
        (work / name).mkdir(parents=True)
        (work / name / "__init__.py").write_text(f"WHOSE = 'research {name}'\n")
    (work / "pipeline.py").write_text("WHOSE = 'research pipeline'\n")
    script = textwrap.dedent(
        """
        import configs, cache, pipeline as research_pipeline
        assert (configs.WHOSE, cache.WHOSE, research_pipeline.WHOSE) == (
            "research configs", "research cache", "research pipeline")
        """
    ) + _readme_example() + textwrap.dedent(
        """
        import sys, cvgl
        import configs, cache
        import pipeline as local
        assert (configs.WHOSE, cache.WHOSE, local.WHOSE) == (
            "research configs", "research cache", "research pipeline")
        assert "site-packages" in cvgl.__file__ and pipeline.__name__ == "cvgl.pipeline", cvgl.__file__
        print("EXAMPLE OK")
        """
    )
    (work / "example.py").write_text(script)
    out = _run([str(vpy), "example.py"], work, env)
    assert "EXAMPLE OK" in out.stdout

    # The console script, from the same folder, sees the entries the example cached.
    listed = _run([str(venv / "bin" / "pipeline"), "cache", "ls"], work, {**env, "PIPELINE_CACHE_DIR": "cache"})
    assert "demo.isms.query_drone" in listed.stdout
