"""The theorems as executable checks: each returns a certificate (or counter-example) that re-verifies.

>>> from fastattn.proofs_checks import low_rank_certificate, full_rank_witness
>>> low_rank_certificate("x**2", d=4).bound
10
>>> full_rank_witness("exp(x)", 16).verify()
True
"""

from fastattn.proofs_checks.certificates import METHODS, Certificate, CertificateError, Undecided
from fastattn.proofs_checks.definite import (
    DerivationCertificate,
    QuadraticFormCertificate,
    ValueAtZeroCertificate,
    bernstein_derivation,
    completely_monotone_derivation,
    metric_transform,
    positive_definite,
)
from fastattn.proofs_checks.rank import (
    FullRankCertificate,
    LowRankCertificate,
    PreservationCertificate,
    full_rank_witness,
    low_rank_certificate,
    low_rank_preservation,
    rank_bound,
)

__all__ = [
    "Certificate", "CertificateError", "Undecided", "METHODS",
    "LowRankCertificate", "FullRankCertificate", "PreservationCertificate",
    "DerivationCertificate", "QuadraticFormCertificate", "ValueAtZeroCertificate",
    "low_rank_certificate", "full_rank_witness", "low_rank_preservation", "rank_bound",
    "completely_monotone_derivation", "bernstein_derivation", "positive_definite", "metric_transform",
    "rank_check",
]


def rank_check(f, *, d: int = 1, n: int = 32):
    """The rank certificate that applies to f: low rank (polynomial, at head dim d) or a full-rank witness of size n.

    >>> rank_check("exp(x)", n=8).check
    'full-rank'
    >>> rank_check("x**2 + 1", d=3).bound
    7
    """
    from fastattn.transforms import spec

    f = spec(f)
    if f.is_polynomial:
        return low_rank_certificate(f, d)
    return full_rank_witness(f, n)
