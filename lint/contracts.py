"""An import-linter contract for what its own ``forbidden`` type cannot say: no module of the project
imports a private module (a name starting with ``_``) of a package from outside it, such as
grpcio's ``grpc._cython``, ``grpc._common`` or ``grpc._channel``, whose insides change between
releases without notice.

import-linter records an import of an outside package under the package's top-level name, so the
contract reads the import statements it recorded for each import of that package.
"""

from __future__ import annotations

import ast

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def _imported(statement: str) -> list[str]:
    """Every dotted name an import statement may bring in: ``from a import b`` -> a, a.b."""
    try:
        tree = ast.parse(statement.strip())
    except SyntaxError:  # a statement over several lines: its first line names the module
        tree = ast.parse(statement.strip().rstrip("(\\") + " _")
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _private(name: str) -> bool:
    """``grpc._cython.cygrpc`` and ``grpc.aio._channel`` are private; ``grpc.aio`` is not."""
    return any(part.startswith("_") and not part.startswith("__") for part in name.split(".")[1:])


class PrivateModulesContract(Contract):
    """No module of ``container`` imports a private module of the outside package ``package``.

    Options: ``container`` (the project package to check), ``package`` (the outside package).
    """

    container = fields.StringField()
    package = fields.StringField()

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        container, package = str(self.container), str(self.package)
        offenders = []
        for module in sorted(graph.find_descendants(container) | {container}):
            if package not in graph.find_modules_directly_imported_by(module):
                continue
            for detail in graph.get_import_details(importer=module, imported=package):
                line = str(detail["line_contents"])
                names = [name for name in _imported(line) if name.split(".")[0] == package]
                if any(_private(name) for name in names):
                    offenders.append(f"{module}:{detail['line_number']}: {line}")
        return ContractCheck(kept=not offenders, metadata={"offenders": offenders})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for offender in check.metadata["offenders"]:
            output.print_error(offender, bold=False)
            output.new_line()
