# The part files are pieces of one module (each uses the names of the parts before it), so
# pytest's --doctest-modules cannot import them one by one; tests/test_parts.py runs their
# doctests on the joined module instead.
collect_ignore_glob = ["[0-9][0-9]_*.py"]
