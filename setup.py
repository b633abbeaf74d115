"""Package layout: `passes/` and `targets/` live at the repository root so the architecture is
visible there, but install as `qcompile.passes` and `qcompile.targets` so no generic top-level
names land in anyone's site-packages. Metadata is in pyproject.toml."""
from setuptools import find_packages, setup

ROOTS = {"qcompile": "qcompile", "qcompile.passes": "passes", "qcompile.targets": "targets"}

packages = []
for package, folder in ROOTS.items():
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=ROOTS)
