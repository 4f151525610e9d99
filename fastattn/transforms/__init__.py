"""f as a symbolic object: safe parsing, classification, series and bounds, positivity, feature maps."""

from fastattn.transforms.approx import Approximation, chebyshev, error_bound, minimax
from fastattn.transforms.features import (
    FEATURE_MAPS,
    FeatureMap,
    GaussianFeatureMap,
    PolynomialFeatureMap,
    RandomFeatureMap,
    feature_map,
    gaussian_feature_map,
    monomial_indices,
    register_feature_map,
    symmetric_dim,
)
from fastattn.transforms.parse import X, parse_spec
from fastattn.transforms.spec import KINDS, Positivity, Spec, spec

__all__ = [
    "X", "parse_spec", "Spec", "spec", "KINDS", "Positivity",
    "FeatureMap", "PolynomialFeatureMap", "RandomFeatureMap", "GaussianFeatureMap",
    "FEATURE_MAPS", "register_feature_map", "feature_map", "gaussian_feature_map",
    "symmetric_dim", "monomial_indices",
    "Approximation", "chebyshev", "minimax", "error_bound",
]
