"""Load a script from bench/ as a module, as `python bench/NAME.py` would see its imports."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parents[2] / 'bench'


def load_bench(name: str) -> ModuleType:
    """bench/<name>.py as a module; bench/ goes on sys.path first because some scripts import their
    siblings (fault_soak_bench imports soak_bench), as they do when run as scripts."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
