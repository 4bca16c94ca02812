"""Ray orchestration, recipes, CLI, manifest and the task ledger of tokenmill."""

__version__ = "0.1.0"
