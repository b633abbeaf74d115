"""The error hierarchy. Every error a user can cause is a `QCompileError`; the CLI prints its
message as one paragraph and exits 2. Anything else escaping is an internal error (exit 1)."""
from __future__ import annotations


class QCompileError(Exception):
    """Base of every user-facing error (bad model, bad text, bad pipeline, bad target)."""

    exit_code = 2


class ParseError(QCompileError):
    """Malformed `.qir` text. Carries line and column and renders a caret under the fault."""

    def __init__(self, message: str, text: str = "", line: int = 0, column: int = 0,
                 filename: str = "<string>"):
        self.bare_message = message
        self.line, self.column, self.filename = line, column, filename
        rendered = message
        if line:
            src = text.splitlines()[line - 1] if line - 1 < len(text.splitlines()) else ""
            rendered = (f"{filename}:{line}:{column}: {message}\n"
                        f"  {src}\n  {' ' * max(column - 1, 0)}^")
        super().__init__(rendered)


class VerifyError(QCompileError):
    """The IR breaks an invariant; the message names the node and shows its printed line."""


class OpError(QCompileError):
    """Unknown op, unknown or mistyped attribute, or inputs an op cannot take."""


class PipelineError(QCompileError):
    """A malformed pipeline string, an unknown pass or a bad pass option."""


class PassError(QCompileError):
    """A pass refused the graph (for example a constraint it cannot meet)."""


class FrontendError(QCompileError):
    """A model could not be imported (unsupported ops, corrupt file, missing shapes)."""


class InterpError(QCompileError):
    """The interpreter was given inputs that do not fit the graph, or a graph it cannot run."""
