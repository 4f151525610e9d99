"""The ``spec:D:DV:normalize[:T]`` strings of the scripts beside this one (the code: ``fastattn.bench.cases``)."""

from fastattn.bench.cases import parse_case  # noqa: F401
