"""Every app of ours is packaged: an install from pyproject.toml and the image hold it
(docs/architecture.md, "Packaging": a new app touches both, or an install leaves it out)."""

import re
import tomllib
from pathlib import Path

from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent


def our_top_level_packages() -> set[str]:
    """The top-level packages of this repository that INSTALLED_APPS names."""
    tops = {app.split(".")[0] for app in settings.INSTALLED_APPS}
    return {top for top in tops if (ROOT / top / "__init__.py").is_file()}


def test_every_app_is_in_pyprojects_packages():
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]

    assert {f"{top}*" for top in our_top_level_packages()} <= set(include)


def test_the_image_copies_every_app_before_installing_the_project():
    dockerfile = (ROOT / "Dockerfile").read_text()
    before_install = dockerfile[: dockerfile.index("pip install --no-cache-dir --no-deps")]
    copied = set(re.findall(r"^COPY (\w+) \./\1$", before_install, re.MULTILINE))

    assert our_top_level_packages() <= copied
