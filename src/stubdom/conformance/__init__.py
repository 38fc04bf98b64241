"""``stubdom conformance``: drive a stubdomain (or watch a toolstack) clause by clause
through the protocol of reference §1-§3 and §7, and report pass / fail / not supported."""
