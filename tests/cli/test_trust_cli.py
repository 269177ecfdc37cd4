"""The command line's error contract (exactly one line on stderr, exit 2) and the install lock."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TINY, cli, one_error_line, start_cli

ROOT = Path(__file__).resolve().parents[2]


def exactly_one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The whole of stderr is one ``error:`` line: no blank line, no warning, no traceback."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    return lines[0]


# -- usage errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,named",
    [
        (["extrat"], "extrat"),
        (["extract", "--bogus"], "--bogus"),
        (["cache", "show"], "ref"),
        (["--quiet", "extract", "demo", "--nproc", "two"], "--nproc"),
    ],
    ids=["unknown-command", "unknown-option", "missing-argument", "bad-option-value"],
)
def test_usage_error_is_one_line_naming_it_and_exit_2(tmp_path, args, named):
    line = exactly_one_error_line(cli(*args, cache=tmp_path / "c", cwd=tmp_path, quiet=False))
    assert named.lower() in line.lower()
    assert "--help" in line  # where to read the right usage
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["extract", "--help"], ["cache", "show", "--help"]])
def test_help_still_prints_usage_and_exits_0(tmp_path, args):
    p = cli(*args, cache=tmp_path / "c", cwd=tmp_path, quiet=False)
    assert p.returncode == 0, p.stderr
    assert "Usage" in p.stdout and p.stderr == ""


# -- config paths ---------------------------------------------------------------------------------
def test_directory_given_as_config_says_it_is_a_directory(tmp_path):
    (tmp_path / "myconfigs").mkdir()
    line = exactly_one_error_line(cli("extract", "myconfigs", cache=tmp_path / "c", cwd=tmp_path, quiet=False))
    assert "myconfigs is a directory" in line


def test_shipped_config_name_still_wins_over_a_folder_of_that_name(tmp_path):
    (tmp_path / "demo").mkdir()
    p = cli("extract", "demo", "backbone.layrs=[1]", cache=tmp_path / "c", cwd=tmp_path)
    assert "did you mean 'backbone.layers'" in one_error_line(p)  # demo.yaml was loaded


# -- nothing around the error line ----------------------------------------------------------------
@pytest.mark.slow
def test_error_before_any_progress_has_no_blank_line_without_quiet(tmp_path):
    p = cli(
        "extract", "demo", "dataset.layout=u1652", f"root={tmp_path / 'nowhere'}", *TINY,
        cache=tmp_path / "c", cwd=tmp_path, quiet=False,
    )  # fmt: skip
    assert "nowhere" in exactly_one_error_line(p)


@pytest.mark.slow
def test_error_after_progress_bars_ran_is_the_only_line_without_quiet(tmp_path):
    from cvgl.datasets.synthetic import make_synthetic_u1652

    root = tmp_path / "u1652"
    make_synthetic_u1652(root, n_locations=6, n_distractors=3, views_per_location=3, size=64, seed=1)
    # The last query image in list order: the gallery and most queries are extracted (bars drawn) first.
    victim = sorted((root / "test" / "query_drone").rglob("*.jpeg"))[-1]
    victim.write_bytes(victim.read_bytes()[:100])
    p = cli(
        "extract", "demo", "dataset.layout=u1652", f"root={root}", *TINY, cache=tmp_path / "c", cwd=tmp_path,
        quiet=False,
    )
    assert victim.name in exactly_one_error_line(p)


def _import_pair(tmp_path: Path, cache: Path) -> None:
    rng = np.random.default_rng(0)
    for name, n in (("q", 4), ("g", 6)):
        x = rng.standard_normal((n, 8)).astype(np.float32)
        np.save(tmp_path / f"{name}.npy", x / np.linalg.norm(x, axis=1, keepdims=True))
        np.save(tmp_path / f"{name}_labels.npy", np.arange(n))
        p = cli(
            "cache", "import", str(tmp_path / f"{name}.npy"), "--labels", str(tmp_path / f"{name}_labels.npy"),
            "--alias", f"{name}{name}", cache=cache, cwd=tmp_path,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr


@pytest.mark.slow
def test_library_warning_before_an_error_does_not_add_lines(tmp_path):
    # retrieve.device=cuda without CUDA warns (in torch-side code) before the cvft size check fails.
    cache = tmp_path / "c"
    _import_pair(tmp_path, cache)
    p = cli(
        "retrieve", "query=qq", "gallery=gg", "protocol=cvft", "retrieve.device=cuda", "out=r",
        cache=cache, cwd=tmp_path, quiet=False,
    )  # fmt: skip
    assert "cvft" in exactly_one_error_line(p)


@pytest.mark.slow
def test_warning_of_a_successful_command_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CUDA fallback warning only fires on a machine without CUDA")
    cache = tmp_path / "c"
    _import_pair(tmp_path, cache)
    p = cli("retrieve", "query=qq", "gallery=gg", "retrieve.device=cuda", "out=r", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "cuda" in lines[0].lower(), p.stderr


@pytest.mark.slow
def test_ctrl_c_mid_extraction_exits_130_and_says_how_to_resume(tmp_path):
    from cvgl.datasets.synthetic import make_synthetic_u1652

    root = tmp_path / "u1652"
    make_synthetic_u1652(root, n_locations=60, n_distractors=2, views_per_location=4, size=64, seed=2)
    cache = tmp_path / "c"
    proc = start_cli(
        "extract", "demo", "dataset.layout=u1652", f"root={root}", *TINY,
        cache=cache, cwd=tmp_path, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 120
    # Interrupt as soon as the first shard of the first entry exists: on a fast machine the whole
    # extraction takes under a second, so waiting for more could miss it.
    while time.time() < deadline and not list((cache / "entries").glob("*/shard-00000.h5")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and "rerun" in lines[0], stderr


# -- the install lock ------------------------------------------------------------------------------
def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    assert m, spec
    return _canonical(m.group(1))


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)", line)
        assert m, f"constraints.txt line {raw!r} is not an exact pin"
        pins[_canonical(m.group(1))] = m.group(2)
    return pins


def test_constraints_pin_every_dependency_pyproject_names_within_its_ranges():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    pins = _pins()
    missing = sorted({_requirement_name(s) for s in specs} - set(pins))
    assert not missing, f"constraints.txt pins none of {missing}"
    assert pins["torch"] == "2.13.0"  # the torch the README and .ci/run install first
    requirements = pytest.importorskip("packaging.requirements")
    for spec in specs:
        req = requirements.Requirement(spec)
        version = pins[_canonical(req.name)]
        assert req.specifier.contains(version, prereleases=True), (
            f"pin {req.name}=={version} is outside {spec}"
        )


def test_readme_and_ci_install_with_the_lock_into_a_fresh_environment():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    installs = [
        ln for text in (ci, section) for ln in text.splitlines() if "pip install" in ln and "`" not in ln
    ]
    assert len(installs) >= 6
    assert all("-c constraints.txt" in ln for ln in installs), installs
    assert "-m venv" in ci
