"""Sphinx configuration for skfg."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.abspath("../benchmarks"))  # ledger.docs: numbers and tables from benchmarks/results

project = "skfg"
author = "the skfg developers"
copyright = "2026, the skfg developers"
release = "0.1.0"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx", "numpydoc", "ledger.docs"]
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
autodoc_default_options = {}
exclude_patterns = ["_build"]
html_theme = "alabaster"
nitpicky = False
