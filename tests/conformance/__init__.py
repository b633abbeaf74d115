"""Conformance tests: qcompile's integer ops checked bit for bit against external references."""
