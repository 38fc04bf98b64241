"""The corpus, one module per area of cx's behaviour (nodes, paths, permissions, watches,
transactions, domains, quotas) plus hostile input. Importing registers them."""

from tests.differential.cases import (  # noqa: F401
    domains,
    hostile,
    nodes,
    paths,
    perms,
    quotas,
    transactions,
    watches,
)
