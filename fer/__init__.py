"""fer: facial expression recognition on FER2013, built on minicnn.

Modules are imported where they are used (`from fer.data import load`), so importing
one part never pulls in the others.
"""
