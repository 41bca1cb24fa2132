"""Every code example of the documentation runs (issue 7).

Each page of ``docs/`` is one test. Its ``.. code-block:: python`` blocks
run in page order, in one namespace (a module of its own, so views and
classes defined there have a real ``__module__``); its ``.. code-block::
pycon`` blocks are doctests run by the standard library's ``doctest`` in
that same namespace, their output compared. Blocks are compiled with the
page as their file name and their real line numbers, so a failure, and
every frame of its traceback, points at the ``.rst`` line.

Two reST comments, visible in the page's source and not rendered, adjust
this (the convention is in ``docs/testing.rst``):

* ``.. example-setup:`` with an indented body: Python run before the next
  block, for stand-ins of the reader's own code (``load_site_settings``);
* ``.. example-fragment: <reason>`` on the line(s) just before a block:
  the block is compiled (its syntax checked), never run. A ``settings.py``
  fragment, code that needs several processes.

Anything else that could hide an example fails the test: a literal block
made with ``::`` (its language is unknown), a code block without a
language, an unknown ``.. example-`` comment, a fragment marker without a
reason or not followed by a code block.

The examples run against what the rest of the suite uses: Django with
``tests.settings``, the test database in autocommit mode (so
``transaction.on_commit`` behaves as on a site), the session's real Redis
as ``caches["default"]``, an empty ``LocalSyncCache`` registry, and the
models of ``tests/models.py``. What a page connects or registers
process-wide (signal receivers, lazy model references, group-cached views)
is undone after it, so pages cannot affect each other or the other tests.
"""

from __future__ import annotations

import doctest
import gc
import re
import sys
import textwrap
import traceback
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.core import signals as core_signals
from django.db.models import signals as model_signals
from django.dispatch import Signal
from pytest_django import DjangoDbBlocker

from tests.harness.backends import Backend, BackendRegistry, activate_backend

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(DOCS_DIR.glob("*.rst"))

#: Pygments names of the languages whose blocks run (as code, or as
#: doctests); every other named language is shown only.
RUN = {"python", "python3", "py", "py3"}
DOCTEST = {"pycon", "python-console"}

_DIRECTIVE = re.compile(
    r"^(?P<indent> *)\.\. (?:code-block|code|sourcecode)::(?P<lang>.*)$"
)
_MARKER = re.compile(r"^(?P<indent> *)\.\. example-(?P<kind>[\w-]*):(?P<rest>.*)$")
_OPTION = re.compile(r"^ *:[\w-]+:")
_LITERAL = re.compile(r":: *$")


class DocsExampleError(Exception):
    """A page breaks the example convention; the message says where and how."""


@dataclass
class Block:
    """One piece of a page to run, check or compile."""

    kind: str  # "run", "doctest", "fragment" or "setup"
    line: int  # 1-based line of the first line of ``source`` in the page
    source: str
    reason: str = ""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _body(lines: list[str], start: int, parent_indent: int) -> tuple[int, str, int]:
    """Return (first line number, dedented text, index after the body) of
    the indented body that starts at index ``start``."""
    end = start
    while end < len(lines) and (
        not lines[end].strip() or _indent(lines[end]) > parent_indent
    ):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    first = start
    while first < end and not lines[first].strip():
        first += 1
    text = textwrap.dedent("\n".join(lines[first:end]))
    return first + 1, text, end


def parse_page(path: Path) -> list[Block]:
    """Return the blocks of a page in order, or raise DocsExampleError."""
    lines = path.read_text(encoding="utf-8").splitlines()
    name = path.name
    blocks: list[Block] = []
    pending: tuple[int, str] | None = None  # fragment marker: (line, reason)
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = _MARKER.match(line)
        directive = _DIRECTIVE.match(line)
        if pending is not None and not directive and not marker:
            raise DocsExampleError(
                f"{name}, line {pending[0]}: '.. example-fragment:' must be "
                "directly followed by the '.. code-block::' it marks."
            )
        if marker:
            kind, rest = marker["kind"], marker["rest"].strip()
            if kind == "fragment":
                if not rest:
                    raise DocsExampleError(
                        f"{name}, line {i + 1}: say why the block cannot run: "
                        "'.. example-fragment: settings.py'."
                    )
                pending = (i + 1, rest)
                i += 1
                continue
            if kind == "setup":
                follows = lines[i + 1] if i + 1 < len(lines) else ""
                start, text, i = _body(lines, i + 1, _indent(line))
                # A blank line after the marker would end the comment, and
                # the code would be rendered as a block quote.
                if rest or not follows.strip() or not text:
                    raise DocsExampleError(
                        f"{name}, line {start}: '.. example-setup:' takes no "
                        "argument, and its indented body of Python starts on "
                        "the next line (no blank line in between)."
                    )
                blocks.append(Block("setup", start, text))
                continue
            raise DocsExampleError(
                f"{name}, line {i + 1}: unknown marker '.. example-{kind}:'; "
                "use '.. example-fragment: <reason>' or '.. example-setup:'."
            )
        if directive:
            lang = directive["lang"].strip()
            if not lang:
                raise DocsExampleError(
                    f"{name}, line {i + 1}: name the block's language "
                    "('.. code-block:: python', 'sh', 'text'...)."
                )
            j = i + 1
            while j < len(lines) and _OPTION.match(lines[j]):
                j += 1
            start, text, i = _body(lines, j, _indent(line))
            if pending is not None:
                if lang not in RUN | DOCTEST:
                    raise DocsExampleError(
                        f"{name}, line {pending[0]}: only Python blocks can be "
                        f"marked as fragments, not {lang!r}."
                    )
                blocks.append(Block("fragment", start, text, pending[1]))
                pending = None
            elif lang in RUN:
                blocks.append(Block("run", start, text))
            elif lang in DOCTEST:
                blocks.append(Block("doctest", start, text))
            continue
        if _LITERAL.search(line) and not line.lstrip().startswith(".."):
            raise DocsExampleError(
                f"{name}, line {i + 1}: a literal block made with '::' is not "
                "tested; use '.. code-block:: python' (or 'text', 'sh'...)."
            )
        i += 1
    if pending is not None:
        raise DocsExampleError(
            f"{name}, line {pending[0]}: '.. example-fragment:' marks no block."
        )
    return blocks


def _compile(block: Block, path: Path) -> types.CodeType:
    # Blank lines in front give the code the page's line numbers.
    return compile("\n" * (block.line - 1) + block.source, str(path), "exec")


def _failure(path: Path, block: Block, exc: BaseException) -> str:
    """Describe an exception raised by a block: the page line, then the
    traceback from the page's first frame on."""
    tb = traceback.extract_tb(exc.__traceback__)
    lines = [frame.lineno for frame in tb if frame.filename == str(path)]
    line = lines[-1] if lines else block.line
    first = next((n for n, f in enumerate(tb) if f.filename == str(path)), 0)
    detail = "".join(
        traceback.format_list(tb[first:])
        + traceback.format_exception_only(type(exc), exc)
    )
    return (
        f"docs/{path.name}, line {line} (example from line {block.line}): "
        f"{type(exc).__name__}: {exc}\n{detail}"
    )


def run_page(path: Path) -> None:
    """Run every example of the page; fail with its page and line."""
    try:
        blocks = parse_page(path)
    except DocsExampleError as exc:
        pytest.fail(str(exc), pytrace=False)
    module = types.ModuleType(f"docs_examples.{path.stem}")
    module.__file__ = str(path)
    sys.modules[module.__name__] = module
    try:
        for block in blocks:
            _run_block(path, block, module.__dict__)
    finally:
        del sys.modules[module.__name__]
        # The page's functions hold its namespace (and it holds them): break
        # the cycles, so the synchronizers and caches it made are gone before
        # the next test lists what this process holds.
        module.__dict__.clear()
        gc.collect()


def _run_block(path: Path, block: Block, namespace: dict[str, Any]) -> None:
    if block.kind == "doctest":
        _run_doctest(path, block, namespace)
        return
    error: str | None = None
    try:
        code = _compile(block, path)
    except SyntaxError as exc:
        error = (
            f"docs/{path.name}, line {exc.lineno}: {block.kind} block from line "
            f"{block.line} does not compile: {exc.msg}"
        )
    if error is None and block.kind != "fragment":
        try:
            exec(code, namespace)
        except Exception as exc:
            error = _failure(path, block, exc)
    if error is not None:
        # Outside the except clauses: the report is the page's, not a chain.
        pytest.fail(error, pytrace=False)


def _run_doctest(path: Path, block: Block, namespace: dict[str, Any]) -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(
        block.source, namespace, f"docs/{path.name}", str(path), block.line - 1
    )
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    report: list[str] = []
    runner.run(test, out=report.append, clear_globs=False)
    # DocTest works on a copy of the namespace: keep what the session defined.
    namespace.update(test.globs)
    if runner.failures:
        pytest.fail(
            f"docs/{path.name}: pycon example from line {block.line} failed\n"
            + "".join(report),
            pytrace=False,
        )


# -- Isolation: what a page registers process-wide is undone after it ---------


def _signals() -> list[Signal]:
    found = []
    for module in (model_signals, core_signals):
        found += [s for s in vars(module).values() if isinstance(s, Signal)]
    return found


@pytest.fixture
def _isolated_process_state() -> Iterator[None]:
    from django.apps import apps

    from syncache import dogpile, groups

    receivers = {signal: list(signal.receivers) for signal in _signals()}
    pending = {key: list(value) for key, value in apps._pending_operations.items()}
    registries = [
        (registry, dict(registry))
        for registry in (groups._page_specs, getattr(dogpile, "lock_users", None))
        if registry is not None
    ]
    yield
    for signal, saved in receivers.items():
        with signal.lock:
            signal.receivers[:] = saved
            signal.sender_receivers_cache.clear()
    apps._pending_operations.clear()
    apps._pending_operations.update(pending)
    for registry, saved_entries in registries:
        registry.clear()
        registry.update(saved_entries)


@pytest.fixture
def docs_redis(
    request: pytest.FixtureRequest,
    syncache_backends: BackendRegistry,
    django_db_blocker: DjangoDbBlocker,
) -> Iterator[Backend]:
    """The session's Redis as ``caches["default"]``, with a fresh prefix."""
    with activate_backend(request, "redis", syncache_backends, django_db_blocker) as b:
        yield b


# -- The tests -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
@pytest.mark.usefixtures("fresh_registry", "_isolated_process_state", "docs_redis")
def test_examples_run(page: Path) -> None:
    run_page(page)


def _page(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.rst"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_blocks_carry_page_lines(tmp_path: Path) -> None:
    path = _page(
        tmp_path,
        """\
        Title
        =====

        .. example-setup:
           helper = 1

        .. code-block:: python
           :caption: x

           a = helper

           b = a

        .. example-fragment: settings.py
        .. code-block:: python

           CACHES = {...}

        .. code-block:: pycon

           >>> c = b
           >>> c
           1

        .. code-block:: py3

           assert c == 1

        .. code-block:: sh

           pip install syncache
        """,
    )
    blocks = parse_page(path)
    assert [(b.kind, b.line) for b in blocks] == [
        ("setup", 5),
        ("run", 10),
        ("fragment", 17),
        ("doctest", 21),
        ("run", 27),
    ]
    assert blocks[1].source == "a = helper\n\nb = a"
    assert blocks[2].reason == "settings.py"
    run_page(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Text::\n\n   x = 1\n", "line 1: a literal block made with '::'"),
        (".. code-block::\n\n   x = 1\n", "line 1: name the block's language"),
        (".. example-fragment:\n.. code-block:: python\n\n   x\n", "say why"),
        (".. example-fragment: why\n\nText.\n", "must be directly followed"),
        (".. example-fragment: why\n.. code-block:: sh\n\n   ls\n", "only Python"),
        (".. example-fragmnet: why\n", "unknown marker"),
        (".. example-fragment: why\n", "marks no block"),
        (".. example-setup:\n\n   x = 1\n", "starts on the next line"),
    ],
)
def test_convention_breaches_fail(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DocsExampleError, match=re.escape(message)):
        parse_page(_page(tmp_path, text))


def _failure_of(path: Path) -> str:
    with pytest.raises(pytest.fail.Exception) as info:
        run_page(path)
    return str(info.value)


def test_a_broken_example_names_page_and_line(tmp_path: Path) -> None:
    path = _page(
        tmp_path,
        """\
        Page
        ====

        .. code-block:: python

           def f():
               return undefined_name

        Later:

        .. code-block:: python

           x = 1
           f()
        """,
    )
    message = _failure_of(path)
    assert message.startswith("docs/page.rst, line 7 (example from line 13): NameError")
    assert "return undefined_name" in message  # the traceback shows the page


def test_a_wrong_doctest_output_names_page_and_line(tmp_path: Path) -> None:
    path = _page(tmp_path, "Page\n\n.. code-block:: pycon\n\n   >>> 1 + 1\n   3\n")
    message = _failure_of(path)
    assert 'File "' in message and "line 5" in message
    assert "Expected:\n    3\nGot:\n    2" in message


def test_a_fragment_that_does_not_compile_fails(tmp_path: Path) -> None:
    path = _page(
        tmp_path,
        "P\n\n.. example-fragment: settings.py\n.. code-block:: python\n\n   X = (\n",
    )
    assert _failure_of(path).startswith("docs/page.rst, line 6: fragment block")


def test_a_fragment_is_not_run(tmp_path: Path) -> None:
    path = _page(
        tmp_path,
        "P\n\n.. example-fragment: x\n.. code-block:: python\n\n   1 / 0\n",
    )
    run_page(path)
