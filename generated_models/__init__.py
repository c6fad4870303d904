"""Pydantic v2 models generated from schemas/ by `epistle codegen` -- do not edit.

Look models up with toolkit.codegen.load_model_index(); the index is in _index.py.
"""
