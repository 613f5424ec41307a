"""Sphinx configuration of the spice_learn documentation.

Build: ``make -C docs html`` (or ``python -m sphinx -W -b html docs docs/_build/html``).
The gallery scripts are not executed by the docs build (they take minutes each
on a CPU); ``pytest -m slow`` runs every one of them. Set
``SPICE_LEARN_DOCS_RUN_GALLERY=1`` to execute them while building.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
import spice_learn  # noqa: E402

project = "spice_learn"
author = "spice_learn developers"
copyright = "2026, spice_learn developers"
release = version = spice_learn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.json", "auto_examples/*.md5"]
autosummary_generate = True
numpydoc_show_class_members = False
numpydoc_validation_checks = set()
autodoc_default_options = {"members": True, "inherited-members": False}
intersphinx_mapping = {}
html_theme = "alabaster"
html_static_path = []
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "plot_gallery": os.environ.get("SPICE_LEARN_DOCS_RUN_GALLERY", "0") == "1",
    "download_all_examples": False,
    "within_subsection_order": "FileNameSortKey",
}
