"""Sphinx configuration for the syncache documentation.

Build with warnings as errors, from the repository root::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import django
from sphinx.ext import napoleon
from sphinx.util import logging

DOCS_DIR = Path(__file__).resolve().parent
ROOT_DIR = DOCS_DIR.parent
# This checkout's package, whatever else is installed, and the docs-only
# Django settings module next to this file.
sys.path[:0] = [str(ROOT_DIR), str(DOCS_DIR)]

# Always the docs settings, even when the environment names another module:
# autodoc must import syncache the same way everywhere.
os.environ["DJANGO_SETTINGS_MODULE"] = "_settings"
django.setup()

import syncache  # noqa: E402 - needs Django set up

logger = logging.getLogger(__name__)

# -- Project -----------------------------------------------------------------

project = "syncache"
author = "syncache developers"
copyright = "syncache developers"
release = syncache.__version__
version = ".".join(release.split(".")[:2])

# -- General -----------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

root_doc = "index"
exclude_patterns = ["_build"]
templates_path: list[str] = []
default_role = "literal"
pygments_style = "sphinx"

# Every cross-reference must resolve; references to Django, the standard
# library and typing cannot (no intersphinx: the build runs offline), so
# only those are ignored.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(django|typing|collections|dataclasses|contextlib)\..*"),
    (r"py:.*", r"debug_toolbar\..*"),
    (r"py:.*", r"(Any|Callable|Sequence|Iterable|Mapping|Final|T)"),
    (r"py:.*", r"(str|int|float|bool|bytes|object|dict|list|tuple|type|None)"),
    (r"py:.*", r"(Exception|ValueError|TypeError|AssertionError)"),
    # Private names that public signatures and docstrings mention.
    (r"py:.*", r"(syncache\.medium\.)?(T|_Failed)"),
    (r"py:.*", r"(syncache\.synchronizer\.)?_Snapshot"),
    (r"py:.*", r"(syncache\.local\.)?_Registry"),
    (r"py:.*", r"(syncache\.hooks\.)?TargetT"),
    (r"py:.*", r"(syncache\.groups\.)?(T|ViewT)"),
    (r"py:.*", r"(syncache\.dogpile\.)?(T|V)"),
]

# -- autodoc / napoleon --------------------------------------------------------

autoclass_content = "both"  # the constructor's Args: live in __init__
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True
autodoc_typehints = "signature"
autosummary_generate = False

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- HTML --------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"syncache {release}"
html_theme_options = {
    "description": "Cross-process cache invalidation for Django.",
    "fixed_sidebar": True,
}


# -- Local tweaks --------------------------------------------------------------


def _napoleon_without_attribute_types(app, what, name, obj, options, lines):
    """Run napoleon on everything except data, attribute and property docs.

    For those, napoleon reads a first line of the form ``text: more text`` as
    ``type: description`` (the Google inline attribute form). syncache types
    its attributes with annotations and writes ``#:`` comments as prose, in
    which a colon is just punctuation, so napoleon would turn the start of
    the sentence into a bogus type.
    """
    if what in {"data", "attribute", "property"}:
        return
    napoleon._process_docstring(app, what, name, obj, options, lines)


def _labels(page, prefix):
    """Return the ids of the ``.. _<prefix>-<id>:`` labels in a docs page."""
    text = (DOCS_DIR / page).read_text(encoding="utf-8")
    return set(re.findall(rf"^\.\. _{prefix}-([a-z0-9-]+):$", text, re.MULTILINE))


def _check_reference_pages(app):
    """Warn when settings.rst or checks.rst is out of step with the code.

    Every key of ``syncache.conf.DEFAULTS`` needs a ``setting-<key>`` label
    in settings.rst, and every check id in syncache/checks.py a
    ``check-<id>`` label in checks.rst, and the other way round. Under
    ``-W`` a missing or stale entry fails the build.
    """
    from syncache.conf import DEFAULTS

    checks_source = (ROOT_DIR / "syncache" / "checks.py").read_text(encoding="utf-8")
    pairs = [
        (
            "settings.rst",
            {key.lower().replace("_", "-") for key in DEFAULTS},
            _labels("settings.rst", "setting"),
            "SYNCACHE key",
        ),
        (
            "checks.rst",
            {
                i.lower()
                for i in re.findall(r'id="syncache\.([A-Z]\d{3})"', checks_source)
            },
            _labels("checks.rst", "check"),
            "system check",
        ),
    ]
    for page, in_code, documented, what in pairs:
        for name in sorted(in_code - documented):
            logger.warning("%s: %s %r is not documented", page, what, name)
        for name in sorted(documented - in_code):
            logger.warning(
                "%s: %s %r is documented but not in the code", page, what, name
            )


def _resolve_reexport(app, env, node, contnode):
    """Resolve ``syncache.<name>`` to where ``<name>`` is documented.

    The names re-exported by ``syncache`` (``syncache.check_all``,
    ``syncache.LocalSyncCache``...) are documented once, in the module that
    defines them (``syncache.local.check_all``...). A docstring or page may
    still refer to them by the short public path; this sends such a
    reference to the documented object instead of leaving it unresolved.
    Only names in ``syncache.__all__`` are redirected, and only to an
    object that is the very same one.
    """
    if node.get("refdomain") != "py":
        return None
    module, _, name = node.get("reftarget", "").rpartition(".")
    if module != "syncache" or name not in syncache.__all__:
        return None
    public = getattr(syncache, name)
    domain = env.get_domain("py")
    for fullname in list(domain.objects):
        owner, _, short = fullname.rpartition(".")
        if short != name or not owner.startswith("syncache."):
            continue
        if getattr(sys.modules.get(owner), name, None) is not public:
            continue
        return domain.resolve_xref(
            env,
            node["refdoc"],
            app.builder,
            node["reftype"],
            fullname,
            node,
            contnode,
        )
    return None


def setup(app):
    listeners = app.events.listeners["autodoc-process-docstring"]
    for listener in list(listeners):
        if listener.handler is napoleon._process_docstring:
            app.disconnect(listener.id)
    app.connect("autodoc-process-docstring", _napoleon_without_attribute_types)
    app.connect("builder-inited", _check_reference_pages)
    app.connect("missing-reference", _resolve_reexport)
