"""The import order docs/architecture.md states holds: a module never imports a part of a higher row, and every
part of edge/ has a row (a new part must be placed, in the document and here). The top-level folders
pyproject.toml installs as parts of edge (images/ as edge.images, provisioning/ as edge.provisioning) count."""

import ast
import os

import edge
import edge.images
import edge.provisioning

EDGE = os.path.dirname(edge.__file__)
# the card's images/ and provisioning/ folders are the packages edge.images and edge.provisioning (pyproject's
# package-dir): in a checkout they lie beside edge/, in an installed wheel inside it
PACKAGES = {"edge": EDGE, "edge.images": os.path.dirname(edge.images.__file__),
            "edge.provisioning": os.path.dirname(edge.provisioning.__file__)}
DOC = os.path.join(EDGE, "..", "docs", "architecture.md")
# highest first, as in docs/architecture.md
ROWS = [
    ["cli", "__main__"],
    ["agent"],
    ["images"],
    ["gateway", "control", "metrics", "status", "fetch", "probes", "media", "provisioning", "demo", "doctor",
     "protection"],
    ["transport", "discovery", "bridge", "systemd"],
    ["store", "fleet", "protect"],
    ["wire"],
    ["ipld"],
    ["kernels", "identity", "config", "netif", "datadir", "units", "atomic", "logsafe", "isolation", "ratelimit",
     "service", "errors", "governor", "__init__"],
]
RANK = {part: i for i, row in enumerate(ROWS) for part in row}


def _part(module: str) -> str:
    """edge.store.repo -> store; edge -> __init__."""
    names = module.split(".")
    return names[1] if len(names) > 1 else "__init__"


def _imports(path: str):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("edge"):
            if node.module == "edge":
                yield from (f"edge.{a.name}" for a in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "edge")


def _modules():
    seen = set()
    for package, top in PACKAGES.items():
        for root, _, files in os.walk(top):
            for name in files:
                path = os.path.join(root, name)
                if name.endswith(".py") and path not in seen:
                    seen.add(path)
                    rel = package + "." + os.path.relpath(path, top)[:-3].replace(os.sep, ".")
                    yield path, rel.removesuffix(".__init__")


def test_every_part_of_edge_has_a_row():
    parts = {_part(module) for _, module in _modules()}
    assert parts - set(RANK) == set(), "place these in docs/architecture.md's import order and in ROWS here"


def test_no_module_imports_a_higher_row():
    against = []
    for path, module in _modules():
        mine = _part(module)
        for imported in _imports(path):
            theirs = _part(imported)
            if theirs != mine and theirs in RANK and RANK[theirs] < RANK[mine]:
                against.append(f"{module} imports {imported}")
    assert against == []


def test_the_document_lists_every_row():
    text = open(DOC, encoding="utf-8").read()
    for row in ROWS:
        for part in row:
            if not part.startswith("__"):
                assert part in text, f"docs/architecture.md does not place {part}"


MAX_LINES = 500   # issue 15: a module that grows past this is split by responsibility, not cut arbitrarily


def test_no_module_is_over_500_lines():
    long = sorted((n, rel) for path, rel in _modules()
                  if (n := sum(1 for _ in open(path, encoding="utf-8"))) > MAX_LINES)
    assert not long, f"split these by responsibility (lines, module): {long}"
