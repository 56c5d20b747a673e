"""studies/study2.py loaded as a module, once, for the tests that read Study 2's script (not a test file)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def study2():
    if "study2" not in sys.modules:
        spec = importlib.util.spec_from_file_location("study2", ROOT / "studies" / "study2.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["study2"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["study2"]
