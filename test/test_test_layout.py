"""Test modules never import each other: what several of them share lives in test/helpers/.

pytest imports a test file with its folder first on sys.path (rootdir "prepend" import mode) and
pytest.ini puts test/ there too, so `from test_calibration import JOINTS` or `import dataset_fixtures`
works, but ties one test module's run to another's import (its fixtures, its module-level state,
its collection) and breaks when either moves. Shared data and harnesses are `helpers.<module>`
(test/helpers/), shared fixtures are in test/conftest.py. Checked statically, every import of every
Python file under test/.
"""

from __future__ import annotations

import ast
from pathlib import Path

TEST = Path(__file__).resolve().parent
FILES = sorted(TEST.rglob('*.py'))


def imported_top_names(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module name) of every absolute import in `path`, nested ones included."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name.split('.')[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append((node.lineno, node.module.split('.')[0]))
    return names


def test_python_files_under_test_are_tests_conftest_or_helpers() -> None:
    others = [
        str(p.relative_to(TEST))
        for p in FILES
        if not p.name.startswith('test_') and p.name != 'conftest.py' and (TEST / 'helpers') not in p.parents
    ]
    assert others == []  # shared code goes into test/helpers/


def test_no_test_module_imports_another_module_of_the_test_tree() -> None:
    assert len(FILES) > 50  # the walk found the suite
    offending = []
    for path in FILES:
        # what a bare import can reach there: the file's own folder (pytest prepends it) and test/
        local = {p.stem for folder in {path.parent, TEST} for p in folder.glob('*.py')} | {
            p.name for p in TEST.iterdir() if p.is_dir() and (p / '__init__.py').is_file()
        }
        for line, name in imported_top_names(path):
            if name in local and name != 'helpers':
                offending.append(f'{path.relative_to(TEST)}:{line}: {name}')
    assert offending == []


def test_test_file_names_are_unique_across_folders() -> None:
    """The test folders are not packages: two test files of one name collide at collection ("import file mismatch")."""
    seen: dict[str, list[str]] = {}
    for path in FILES:
        if path.name.startswith('test_'):
            seen.setdefault(path.name, []).append(str(path.relative_to(TEST)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
