"""fastattn: which entrywise functions f keep f(QK^T) low rank, with proofs, and fast attention from them.

>>> import fastattn
>>> fastattn.spec("exp(x)").kind
'entire'
>>> fastattn.feature_map("x**2", dim=4).dim_out
10
>>> fastattn.analyze("1 + x + x**2/2", dim=4).rank_bound
15
"""

from fastattn.errors import FastAttnError, FeatureMapError, KernelError, SpecError
from fastattn.transforms import FeatureMap, Spec, feature_map, gaussian_feature_map, spec

__all__ = [
    "FastAttnError", "FeatureMapError", "KernelError", "SpecError",
    "Spec", "spec", "FeatureMap", "feature_map", "gaussian_feature_map",
    "analyze", "Analysis", "CertificateError", "low_rank_certificate", "full_rank_witness", "rank_check",
]
__version__ = "0.1.0"

_LAZY = {
    "analyze": "fastattn.analysis",
    "Analysis": "fastattn.analysis",
    "CertificateError": "fastattn.proofs_checks",
    "low_rank_certificate": "fastattn.proofs_checks",
    "full_rank_witness": "fastattn.proofs_checks",
    "rank_check": "fastattn.proofs_checks",
}


def __getattr__(name):
    # The analysis and certificate modules pull in scipy and mpmath machinery: load them on first use.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastattn' has no attribute {name!r}")
