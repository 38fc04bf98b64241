"""The corpus, one module per area of xenstore.md §2 / §3 / §7. Importing registers them."""

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
