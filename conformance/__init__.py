"""Conformance suite of the temperature-free contrastive loss.

``conformance.reference`` holds an independent mpmath reference of SPEC §2–§3,
``conformance.cases`` the golden cases, ``conformance.generate`` writes and checks the golden
files in ``conformance/golden/``, and ``conformance.tolerances`` says how close an
implementation must come to them.
"""
