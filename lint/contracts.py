"""An import-linter contract for what its own ``forbidden`` type cannot say: a submodule of a package
from outside the project (``grpc._cython``) may be imported only by some of the project's modules.

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


class ExternalSubmoduleContract(Contract):
    """``submodule`` (dotted, of an outside package) is imported only under ``allowed_in``.

    Options: ``container`` (the project package to check), ``submodule``, ``allowed_in``.
    """

    container = fields.StringField()
    submodule = fields.StringField()
    allowed_in = fields.StringField()

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        container, submodule, allowed = str(self.container), str(self.submodule), str(self.allowed_in)
        package = submodule.split(".")[0]
        offenders = []
        for module in sorted(graph.find_descendants(container) | {container}):
            if module == allowed or module.startswith(f"{allowed}."):
                continue
            if package not in graph.find_modules_directly_imported_by(module):
                continue
            for detail in graph.get_import_details(importer=module, imported=package):
                line = str(detail["line_contents"])
                if any(name == submodule or name.startswith(f"{submodule}.") for name in _imported(line)):
                    offenders.append(f"{module}:{detail['line_number']}: {line}")
        return ContractCheck(kept=not offenders, metadata={"offenders": offenders})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for offender in check.metadata["offenders"]:
            output.print_error(offender, bold=False)
            output.new_line()
