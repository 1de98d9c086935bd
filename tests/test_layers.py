"""The dependency order of DESIGN.md, as Python imports it: methods, models and augment import neither
Ray nor PyAV, and data never imports a method (they meet in ``beray.batch``)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
before = set(sys.modules)
import {module}
print(json.dumps(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('ray', 'av', 'beray'))))
"""


def _imports(module: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True,
                         check=True)
    return set(json.loads(out.stdout))


def test_a_method_imports_neither_ray_nor_pyav_and_data_imports_no_method():
    for module in ("beray.methods.build", "beray.augment.be", "beray.augment.spatial"):
        loaded = _imports(module)
        assert "beray.batch" in loaded or module.startswith("beray.augment")
        assert not {m for m in loaded if m.split(".")[0] in ("ray", "av")}, module
        assert "beray.data.video" not in loaded, module
    loaded = _imports("beray.data.pipeline")
    assert "av" in loaded and "beray.batch" in loaded  # the reader is data's, the contract shared
    assert not {m for m in loaded if m.startswith("beray.methods")}
