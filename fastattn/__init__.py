"""fastattn: which entrywise functions f keep f(QK^T) low rank, with proofs, and fast attention from them.

>>> import fastattn
>>> fastattn.spec("exp(x)").kind
'entire'
>>> fastattn.feature_map("x**2", dim=4).dim_out
10
"""

from fastattn.errors import FastAttnError, FeatureMapError, SpecError
from fastattn.transforms import FeatureMap, Spec, feature_map, spec

__all__ = ["FastAttnError", "FeatureMapError", "SpecError", "Spec", "spec", "FeatureMap", "feature_map"]
__version__ = "0.1.0"
