"""The layers of the package: only `kakurenbo_hf/hf/` may import transformers or accelerate.

`core/` (engine, sampler, schedules, table), `strategies/`, `tasks/` and `distributed/` are pure
torch/numpy: checked statically (every import statement of every module, even inside functions)
and at run time (importing them in a fresh interpreter loads no transformers).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kakurenbo_hf"
PURE_LAYERS = ("core", "strategies", "tasks", "distributed")
FORBIDDEN = ("transformers", "accelerate")


def _imports(path: Path):
    """(absolute-or-relative module name, resolved package-relative name) of every import in `path`."""
    package_parts = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.module or ""
            else:
                base = package_parts[: len(package_parts) - node.level + 1]
                yield ".".join(base + ((node.module,) if node.module else ()))


@pytest.mark.parametrize("layer", PURE_LAYERS)
def test_pure_layers_never_import_transformers_or_the_hf_layer(layer):
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files, layer
    for path in files:
        for module in _imports(path):
            assert not module.startswith(FORBIDDEN), f"{path.relative_to(PACKAGE)} imports {module}"
            assert not module.startswith("kakurenbo_hf.hf"), f"{path.relative_to(PACKAGE)} imports {module}"


def test_importing_the_pure_layers_loads_no_transformers():
    modules = [f"kakurenbo_hf.{layer}.{path.stem}" for layer in PURE_LAYERS
               for path in sorted((PACKAGE / layer).glob("*.py")) if path.stem != "__init__"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(sorted(n for n in ('transformers', 'accelerate') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_the_package_root_loads_no_transformers_until_a_trainer_is_asked_for():
    code = ("import sys, kakurenbo_hf\nprint('transformers' in sys.modules)\n"
            "kakurenbo_hf.KakurenboTrainer\nprint('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"], out


EXAMPLE_DEPENDENCIES = ("timm", "evaluate", "PIL")


def test_the_library_needs_no_example_dependencies():
    """timm, evaluate and Pillow are extras (`examples`, `tests`): no module of the package imports them at
    import time, and the only use (rendering fractal images) goes through `pil_image`."""
    setup = (PACKAGE.parent / "setup.cfg").read_text()
    requires = setup.split("install_requires =", 1)[1].split("[", 1)[0]
    assert not any(name in requires for name in ("timm", "evaluate", "pillow")), requires
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(name.split(".")[0] in EXAMPLE_DEPENDENCIES for name in names):
                    assert id(node) not in top_level, f"{path.relative_to(PACKAGE)} imports {names} at import time"
                    assert path.name == "fractal.py", f"{path.relative_to(PACKAGE)}: use data.fractal.pil_image()"


def test_without_pillow_the_image_rendering_names_the_extra(monkeypatch):
    from kakurenbo_hf.data.fractal import pil_image

    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed
    with pytest.raises(ImportError, match=r'pip install "kakurenbo_hf\[examples\]"'):
        pil_image()
