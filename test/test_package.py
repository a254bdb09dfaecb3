"""The package builds with colcon (ament_python, checked with catkin_pkg) and installs the layout a
ROS 2 user expects: executables in lib/panoptic_node, launch/ config/ models/ under share."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what a copy of the package for a build leaves out: the repository, builds, outputs, a venv `make` made
COPY_IGNORES = shutil.ignore_patterns(".git", ".venv", "build", "install", "log", "*.egg-info", "__pycache__", "out",
                                      "runs")


def test_package_xml_is_format_3():
    catkin_pkg = pytest.importorskip("catkin_pkg.package")
    pkg = catkin_pkg.parse_package(str(ROOT / "package.xml"))
    assert pkg.package_format == 3 and pkg.name == "panoptic_node"
    assert {d.name for d in pkg.exec_depends} >= {"rclpy", "sensor_msgs", "vision_msgs", "diagnostic_msgs",
                                                  "cv_bridge", "launch", "launch_ros", "lifecycle_msgs"}
    assert {d.name for d in pkg.test_depends} >= {"launch_testing", "launch_testing_ros", "python3-pytest"}
    assert pkg.get_build_type() == "ament_python"


def test_one_version_everywhere():
    """package.xml's version is the package's (what ROS's release tools bump): setup.py reads it, the module
    repeats it and `panoptic-node --version` prints it (the node's /diagnostics carry it: test_node_graph)."""
    import re

    import panoptic_node
    version = re.search(r"<version>([^<]+)</version>", (ROOT / "package.xml").read_text()).group(1)
    setup = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert setup.stdout.strip().splitlines()[-1] == version == panoptic_node.__version__
    cli = subprocess.run([sys.executable, "-m", "panoptic_node.cli", "--version"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert cli.returncode == 0 and cli.stdout.strip() == f"panoptic-node {version}"


@pytest.mark.parametrize("how", [[], ["--symlink-install"]], ids=["copied", "symlinked"])
def test_colcon_build_installs_the_ros_layout(tmp_path, how):
    """Built as the README's ROS 2 recipe builds it, `python -m colcon build` with the Python that has the
    package's dependencies (a venv's on Ubuntu 24.04 / Debian 12): the executables colcon installs run with
    that Python, whatever Python `ros2` itself runs in. `--symlink-install`, what most ROS developers build
    with, installs the same layout, its launch and config files links to the sources."""
    pytest.importorskip("colcon_core", reason="colcon not installed (pip install colcon-common-extensions)")
    src = tmp_path / "src" / "panoptic_node"
    shutil.copytree(ROOT, src, ignore=COPY_IGNORES)
    run = subprocess.run([sys.executable, "-m", "colcon", "build", *how, "--base-paths", str(tmp_path / "src"),
                          "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    install = tmp_path / "install" / "panoptic_node"
    for executable in ("panoptic_node", "panoptic-node"):
        path = install / "lib" / "panoptic_node" / executable
        assert path.read_text().splitlines()[0] == f"#!{os.path.abspath(sys.executable)}", executable
    site = next(install.glob("lib/python3*/site-packages"))
    python_path = os.pathsep.join(filter(None, (str(site), os.environ.get("PYTHONPATH"))))
    run = subprocess.run([str(install / "lib" / "panoptic_node" / "panoptic-node"), "--help"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": python_path})
    assert run.returncode == 0 and "replay" in run.stdout, run.stderr[-2000:]
    share = install / "share" / "panoptic_node"
    assert (share / "package.xml").is_file()
    assert (share / "launch" / "car.launch.py").is_file() and (share / "launch" / "replay.launch.py").is_file()
    assert (share / "config" / "car.param.yaml").is_file() and (share / "config" / "panoptic_node.schema.json").is_file()
    assert (share / "config" / "panoptic.rviz").is_file()
    # car.launch.py finds the Fast DDS profiles it chooses among in the installed share folder
    from panoptic_node.dds_profile import SHIPPED, choose_profile
    for name in SHIPPED:
        assert choose_profile(name, share / "config", environ={})[0].is_file(), name
    assert (share / "models" / "street_lite0.yaml").is_file()
    if how:  # an edit to the sources reaches the installed launch file without a rebuild
        for installed in ("launch/car.launch.py", "config/car.param.yaml", "models/street_lite0.yaml"):
            assert (share / installed).resolve() == (src / installed).resolve(), installed
    assert (tmp_path / "install" / "share" / "ament_index" / "resource_index" / "packages" / "panoptic_node").is_file() or \
        (share / ".." / "ament_index" / "resource_index" / "packages" / "panoptic_node").exists()


def test_launch_files_compile():
    for f in (ROOT / "launch").glob("*.py"):
        compile(f.read_text(), str(f), "exec")


def test_ros_imports_stay_in_ros_package():
    offenders = []
    for f in (ROOT / "panoptic_node").rglob("*.py"):
        if "ros" in f.relative_to(ROOT / "panoptic_node").parts[:1]:
            continue
        text = f.read_text()
        for mod in ("rclpy", "sensor_msgs", "vision_msgs", "launch_ros", "cv_bridge"):
            if f"import {mod}" in text or f"from {mod}" in text:
                offenders.append(f"{f.name}: {mod}")
    assert not offenders, offenders


def test_every_subcommand_is_in_the_help_and_the_readme():
    from panoptic_node.cli import build_parser
    sub = next(a for a in build_parser()._subparsers._group_actions if a.dest == "command")
    out = subprocess.run([sys.executable, "-m", "panoptic_node.cli", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    readme = (ROOT / "README.md").read_text()
    assert len(sub.choices) >= 12
    for cmd in sub.choices:
        assert cmd in out.stdout
        assert f"| `{cmd}" in readme or f"`panoptic-node {cmd}" in readme, f"README does not show {cmd}"


def test_bench_command_runs_every_benchmark_script():
    from panoptic_node.cli import build_parser
    sub = next(a for a in build_parser()._subparsers._group_actions if a.dest == "command")
    choices = set(next(a for a in sub.choices["bench"]._actions if a.dest == "which").choices)
    assert choices == {p.stem[len("bench_"):] for p in (ROOT / "bench").glob("bench_*.py")}


def test_bench_command_lets_a_script_import_its_neighbours():
    # bench_node imports bench/ros_graph.py; `python bench/bench_node.py` has bench/ on sys.path, runpy not by itself
    out = subprocess.run([sys.executable, "-m", "panoptic_node.cli", "bench", "node", "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "--cameras" in out.stdout, out.stderr


RUNS_ITSELF = """
import os, sys
sys.path.insert(0, {bench!r})
import ros_graph
print("run", os.environ.get(ros_graph.RERUN, "first"))
ros_graph.ensure_ros_graph([__file__], modules=("fake_msgs_for_bench",), install=ros_graph.Path({install!r}))
import fake_msgs_for_bench
print("imported", fake_msgs_for_bench.__file__, os.environ["LD_LIBRARY_PATH"].split(os.pathsep)[0])
"""


@pytest.mark.parametrize("built", ["with the module", "without it", "no build"])
def test_ros_benchmarks_find_the_test_message_build_or_say_what_is_missing(tmp_path, built):
    """Where ROS 2 comes from PyPI's wheels, vision_msgs is the test-only build in build/test_msgs: a ROS benchmark
    runs itself again with it on PYTHONPATH and LD_LIBRARY_PATH (as `make test` runs the tests), once; without it,
    one line naming the module, before any baseline is measured."""
    install = tmp_path / "install"
    if built != "no build":
        (install / "lib" / "python").mkdir(parents=True)
    if built == "with the module":
        (install / "lib" / "python" / "fake_msgs_for_bench").mkdir()
        (install / "lib" / "python" / "fake_msgs_for_bench" / "__init__.py").write_text("")
    script = tmp_path / "bench_fake.py"
    script.write_text(RUNS_ITSELF.format(bench=str(ROOT / "bench"), install=str(install)))
    env = {k: v for k, v in os.environ.items() if k != "PANOPTIC_NODE_BENCH_TEST_MSGS"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    if built == "with the module":
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == [
            "run first", "run 1",
            f"imported {install / 'lib' / 'python' / 'fake_msgs_for_bench' / '__init__.py'} {install / 'lib'}"]
    else:  # the build without the module runs once more, then refuses: never a third run
        assert out.returncode == 2
        assert out.stdout.splitlines() == (["run first", "run 1"] if built == "without it" else ["run first"])
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "no module named 'fake_msgs_for_bench'" in lines[0] and "make install-test" in \
            lines[0], out.stderr


def test_every_backend_is_offered_by_the_cli_the_schema_and_the_launch_file():
    import json
    import re
    from pathlib import Path
    from panoptic_node.inference.backends import BACKENDS
    root = Path(__file__).resolve().parents[1]
    schema = (root / "config" / "panoptic_node.schema.json").read_text()
    assert re.search(r'"backend": \{[^}]*"enum": (\[[^]]*\])', schema) and \
        tuple(json.loads(re.search(r'"backend": \{[^}]*"enum": (\[[^]]*\])', schema).group(1))) == BACKENDS
    cli = (root / "panoptic_node" / "cli.py").read_text()
    assert re.search(r'"--backend".*choices=\[(.*?)\]', cli).group(1).replace('"', "").split(", ") == list(BACKENDS)
    assert "|".join(BACKENDS) in (root / "launch" / "car.launch.py").read_text()


def test_pyflakes_finds_nothing():
    """The ROS node, the launch files, the launch tests and the GPU backends only run on a ROS 2 / CUDA
    machine: a misspelt name there would first show in a car. pyflakes reads every file here without
    importing it and reports undefined names, unused imports and the like."""
    import io
    from conftest import from_test_extra
    checkPath = from_test_extra("pyflakes.api").checkPath
    Reporter = from_test_extra("pyflakes.reporter").Reporter
    files = sorted(f for d in ("panoptic_node", "launch", "bench", "test") for f in (ROOT / d).rglob("*.py"))
    out = io.StringIO()
    problems = sum(checkPath(str(f), Reporter(out, out)) for f in files)
    assert problems == 0, out.getvalue()


def test_the_code_a_jetson_runs_parses_as_python_3_10():
    """A Jetson's JetPack 6 has Python 3.10 (Humble), this project's machines 3.11: syntax newer than 3.10
    (except*, a backslash in an f-string expression, PEP 695 generics) would first fail on the car. Parsed by a
    Python 3.10 where one is installed; nothing is compiled or written."""
    py310 = shutil.which("python3.10")
    if py310 is None:
        pytest.skip("no python3.10 on this machine (a Jetson's Python) to parse the package with")
    files = sorted(str(f) for d in ("panoptic_node", "launch") for f in (ROOT / d).rglob("*.py"))
    code = ("import ast, sys\n"
            "for f in sys.argv[1:]:\n"
            "    try:\n"
            "        ast.parse(open(f, encoding='utf-8').read(), f)\n"
            "    except SyntaxError as e:\n"
            "        print(f'{f}:{e.lineno}: {e.msg}')\n")
    done = subprocess.run([py310, "-c", code, *files], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYENV_VERSION": "3.10"})
    if done.returncode and "python3.10" in done.stderr and "not" in done.stderr:  # a pyenv shim without 3.10
        pytest.skip(f"python3.10 does not run here: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def test_pip_installs_it_editable_with_an_old_pip_beside_a_new_setuptools(tmp_path):
    """Ubuntu 22.04's pip (22.0) runs `setup.py develop` for a project without a build system, and the
    setuptools torch 2.13 pulls in (>= 77; 80 and later rewrote develop) refuses the [develop] section ROS 2
    needs in setup.cfg: `make demo`'s `pip install -e .` failed there. pyproject.toml names the build
    system, so every pip builds it through PEP 660 instead."""
    if sys.version_info >= (3, 12):
        pytest.skip("pip 22.0 (Ubuntu 22.04's, for Python 3.10) does not run on Python 3.12")
    src = tmp_path / "panoptic_node"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "install", "log", "*.egg-info",
                                                             "__pycache__", "out", "runs", "models"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["install", "pip==22.0.2", "setuptools>=80"], check=True, timeout=300)
    run = subprocess.run(pip + ["install", "--no-deps", "-e", str(src)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (venv / "bin" / "panoptic-node").is_file() and (venv / "bin" / "panoptic_node").is_file()


def _refuses_pip(python):
    """Whether this Python is one its distribution manages (PEP 668's EXTERNALLY-MANAGED marker, outside a venv)."""
    check = ("import os, sys, sysconfig; print(sys.prefix == sys.base_prefix and "
             "os.path.isfile(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))")
    return subprocess.run([python, "-c", check], capture_output=True, text=True, timeout=60).stdout.strip() == "True"


def _make(src, *args):
    """make in src, as a user runs it: not as a sub-make of the `make test` running this suite"""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=src, capture_output=True, text=True,
                          timeout=300, env=env)


def _make_lines(src, target, python):
    run = _make(src, "-n", target, f"PY={python}")
    assert run.returncode == 0, run.stderr
    return [line for line in run.stdout.splitlines() if not line.startswith("#")]


def test_make_installs_into_a_venv_where_the_python_refuses_pip(tmp_path):
    """Debian 12's and Ubuntu 24.04's own python3 (ROS 2 Jazzy's platforms) refuse `pip install` (PEP 668):
    `make demo` stopped at its first line there. With such a Python make now makes .venv from it (its packages
    visible, colcon told to leave it alone) and installs, tests and runs with the venv's Python; with any
    other Python it installs into that Python, as before."""
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    system = "/usr/bin/python3"
    if not (Path(system).is_file() and _refuses_pip(system)):
        pytest.skip(f"{system} is not a Python that refuses pip (PEP 668): nothing to show here")
    src = tmp_path / "panoptic_node"
    shutil.copytree(ROOT, src, ignore=COPY_IGNORES)
    refused = subprocess.run([system, "-m", "pip", "install", "--no-deps", "-e", str(src)], capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stdout + refused.stderr

    for target in ("demo", "test"):
        lines = _make_lines(src, target, system)
        runs = [line for line in lines if " -m pip " in line or " -m pytest " in line or "panoptic_node.cli" in line]
        assert len(runs) >= 2 and all(".venv/bin/python -m" in line for line in runs), lines
        assert not any(line.startswith(f"{system} -m pip") for line in lines), lines
        assert lines.index(f"{system} -m venv --system-site-packages .venv") < lines.index(runs[0])

    # a .venv make did not finish (a venv that failed half way, or the user's own) is refused, left as it is
    (src / ".venv" / "bin").mkdir(parents=True)
    (src / ".venv" / "bin" / "python").write_text("not made by make")
    refused = _make(src, "demo", f"PY={system}")
    assert refused.returncode != 0
    assert "make: .venv exists but make did not finish making it (no .venv/COLCON_IGNORE)" in refused.stderr
    assert [p.name for p in (src / ".venv").rglob("*")] == ["bin", "python"]
    assert (src / ".venv" / "bin" / "python").read_text() == "not made by make"
    shutil.rmtree(src / ".venv")

    made = _make(src, ".venv/COLCON_IGNORE", f"PY={system}")
    assert made.returncode == 0, made.stderr
    assert (src / ".venv" / "COLCON_IGNORE").is_file()
    assert "include-system-site-packages = true" in (src / ".venv" / "pyvenv.cfg").read_text()
    venv_python = str(src / ".venv" / "bin" / "python")
    assert not _refuses_pip(venv_python)
    installed = subprocess.run([venv_python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(src)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert (src / ".venv" / "bin" / "panoptic-node").is_file() and (src / ".venv" / "bin" / "panoptic_node").is_file()


def test_make_installs_into_any_other_python_itself(tmp_path):
    """A Python in a venv, conda or pyenv takes pip: make installs into it and makes no .venv."""
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    assert not _refuses_pip(sys.executable)   # this suite runs with a Python pip installed it into
    lines = _make_lines(ROOT, "demo", sys.executable)
    python, install = lines[0].split(" ", 1)
    assert os.path.abspath(python) == os.path.abspath(sys.executable), lines
    assert install == "-m pip install -q -e '.[cpu]'", lines
    assert not any(" -m venv " in line for line in lines), lines
