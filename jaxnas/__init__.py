"""jaxnas: differentiable neural architecture search (the DARTS family) in JAX/Flax.

The pieces, each a module: ``spaces`` (supernets taking mixing weights as an argument), ``relax``
(alphas → mixing weights), ``hypergrad`` (bilevel hypergradient estimators), ``regularize``,
``perturb`` and ``stopping`` (recipe pieces), ``eigen`` (Hessian eigenvalues), ``methods`` (recipes),
``search`` (the jitted step), ``derive`` (genotypes), ``data`` (input pipelines), ``cli``.
"""

from jaxnas import (data, derive, eigen, hypergrad, methods, perturb, regularize, relax, search,
                    spaces, stopping)
from jaxnas.derive import Genotype
from jaxnas.errors import JaxnasError
from jaxnas.search import SearchState, init_search_state, make_search_step

__version__ = "0.1.0"

__all__ = ["data", "derive", "eigen", "hypergrad", "methods", "perturb", "regularize", "relax", "search",
           "spaces", "stopping", "Genotype",
           "JaxnasError", "SearchState", "init_search_state", "make_search_step", "__version__"]
