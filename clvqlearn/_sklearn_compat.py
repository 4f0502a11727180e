"""The ONE place where clvqlearn touches scikit-learn's private API.

If a scikit-learn release moves one of these, only this file changes.
"""

from sklearn.base import _fit_context  # noqa: F401
from sklearn.utils._param_validation import (  # noqa: F401
    HasMethods,
    Hidden,
    Interval,
    Options,
    StrOptions,
    validate_parameter_constraints,
    validate_params,
)
from sklearn.utils.validation import validate_data  # noqa: F401

__all__ = ["Hidden", "Interval", "Options", "StrOptions", "_fit_context", "validate_data",
           "validate_parameter_constraints", "validate_params"]
