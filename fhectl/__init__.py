"""``fhectl``: one command line for people and scripts (docs/design.md section 9).

Every user error ends as one line on stderr and a non-zero exit code; tracebacks are
kept for bugs. Commands that print data accept ``-o json``. Each command group is one
module of this package; the dev stack adds ``fhectl dev`` as a plugin (entry point group
``fhectl.commands``) when it is installed, so the product wheel carries no dev tooling.
"""
