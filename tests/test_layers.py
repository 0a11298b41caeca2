"""The package's import layers hold (import-linter, contracts in pyproject.toml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # this tree's package, not the installed one
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_layers():
    run = lint_imports(ROOT)
    assert run.returncode == 0 and "0 broken" in run.stdout, run.stdout + run.stderr


def test_an_import_from_a_higher_layer_breaks_the_contracts(tmp_path):
    """The contracts bite: the pure policy importing the reconciler is refused."""
    shutil.copytree(ROOT / "jhub_spark_scaler", tmp_path / "jhub_spark_scaler",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "jhub_spark_scaler" / "policy.py", "a") as f:
        f.write("\nfrom . import reconciler  # noqa: E402,F401\n")
    run = lint_imports(tmp_path)
    assert run.returncode != 0, run.stdout
    assert "jhub_spark_scaler.policy -> jhub_spark_scaler.reconciler" in run.stdout, run.stdout


def test_the_forbidden_lists_name_every_other_module_of_the_package():
    """A module added later is forbidden to the pure core and the hub side until a contract
    says otherwise: each forbidden list is the whole package but the modules it allows."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    package = {p.stem if p.is_file() else p.name for p in (ROOT / "jhub_spark_scaler").iterdir()
               if (p.suffix == ".py" or (p / "__init__.py").exists()) and not p.name.startswith("__")}
    allowed = {("jhub_spark_scaler.policy", "jhub_spark_scaler.observe"): {"model", "shuffle"},
               ("jhub_spark_scaler.hub",): {"constants", "driver_user", "jvm_archives", "spawner_env"}}
    for contract in (c for c in contracts if c["type"] == "forbidden"):
        sources = tuple(contract["source_modules"])
        internal = {m.split(".", 1)[1] for m in contract["forbidden_modules"]
                    if m.startswith("jhub_spark_scaler.")}
        own = {s.split(".", 1)[1] for s in sources}
        assert internal == package - allowed[sources] - own, contract["name"]
