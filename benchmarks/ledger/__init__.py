"""The results ledger: what stamps a benchmark result, whether it is still true, and the docs' numbers.

Nothing here measures anything, so no stamp hashes this package (the measuring scripts and
``_common.py`` beside it are hashed). See ``README.md``.
"""
