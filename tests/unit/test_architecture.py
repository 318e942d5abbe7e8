"""Rules about the code as a whole, checked on the import graph and the tracked files.

The layer contracts (which package may import which) are import-linter's, in pyproject.toml;
what they cannot express is checked here."""

from __future__ import annotations

import grimp


def test_no_module_of_the_service_takes_part_in_an_import_cycle() -> None:
    """A module never imports, directly or through others, a module that imports it: each
    module can be read (and tested) after the ones it uses. Imports made only for type
    checking count too; a Protocol where the caller is needed breaks such a cycle."""
    graph = grimp.build_graph("service")
    cycles = set()
    for importer in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(importer):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                cycles.add(" -> ".join((importer, *back)))
    assert not cycles, "\n".join(sorted(cycles))
