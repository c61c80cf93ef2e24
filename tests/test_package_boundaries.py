"""layers imports neither tasks nor zoo; tasks imports neither layers nor zoo (DESIGN.md)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("package,forbidden", [("layers", ("tasks", "zoo", "lightning", "hydra")),
                                               ("tasks", ("layers", "zoo", "lightning", "hydra"))])
def test_package_imports_stand_alone(package, forbidden):
    code = (f"import sys, {package}; "
            f"bad = [m for m in {forbidden!r} if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
