"""How the library reads, checked: short functions, no measured figures in its prose, no import
cycle, and `import minicnn` leaves the process as it found it."""
import ast
import json
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("minicnn", "fer")
MAX_FUNCTION_LINES = 40

# a number with a time unit, a speed-up, a throughput, or the words of a timing log
TIMING = re.compile(r"\d\s*(ms|µs|us|ns|sec|seconds?)\b|\d(\.\d+)?x (faster|slower)|images/s|"
                    r"\balternating\b|\bmedians? of\b", re.IGNORECASE)


def library_files():
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def function_lengths(path):
    """(name, first line, lines) of every function in the file, its docstring not counted."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            doc = node.body[0]
            if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
                lines -= doc.end_lineno - doc.lineno + 1
            yield node.name, node.lineno, lines


def prose(path):
    """(line, text) of every comment and string of the file: where the figures would hide."""
    with open(path, "rb") as source:
        for token in tokenize.tokenize(source.readline):
            if token.type in (tokenize.COMMENT, tokenize.STRING):
                yield token.start[0], token.string


def test_no_function_is_over_forty_lines():
    long = [f"{path.relative_to(ROOT)}:{line} {name} ({lines} lines)"
            for path in library_files() for name, line, lines in function_lengths(path) if lines > MAX_FUNCTION_LINES]
    assert not long, "functions over 40 lines (docstrings not counted):\n" + "\n".join(long)


def test_no_docstring_or_comment_quotes_a_timing():
    found = [f"{path.relative_to(ROOT)}:{line + offset}: {text_line.strip()[:100]}"
             for path in library_files() for line, text in prose(path)
             for offset, text_line in enumerate(text.splitlines()) if TIMING.search(text_line)]
    assert not found, "measured figures belong in benchmarks/RESULTS.md:\n" + "\n".join(found)


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path, known):
    """The library modules `path` imports, anywhere in the file (a local import is still an edge)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                yield target if target in known else base


def import_graph():
    paths = {module_name(path): path for path in library_files()}
    return {name: {m for m in imported_modules(path, paths) if m in paths and m != name}
            for name, path in paths.items()}


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_imports_go_one_way():
    graph = import_graph()
    # a package's __init__ gathers its submodules; a submodule reading a sibling through the
    # package is the same edge as reading it directly, so package nodes only lead down
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_import_minicnn_changes_no_process_setting():
    probe = ("import json, os, sys; before = dict(os.environ); import minicnn, minicnn.models, minicnn.io; "
             "after = dict(os.environ); "
             "print(json.dumps({k: [before.get(k), after.get(k)] for k in set(before) | set(after) "
             "if before.get(k) != after.get(k)}))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "MINICNN_REFERENCE")}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env,
                            check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {}


@pytest.mark.parametrize("text", ["took 29.6 ms", "2.25x faster", "624 images/s", "(medians of 400, alternating)"])
def test_the_timing_pattern_finds_figures(text):
    assert TIMING.search(text)


@pytest.mark.parametrize("text", ["x: (N, H, W, C)", "3x3 windows", "Ho = floor((H - kh) / sh) + 1", "1e-7"])
def test_the_timing_pattern_leaves_the_math(text):
    assert not TIMING.search(text)
