"""``stubdom conformance``: drive a stubdomain (or watch a toolstack) clause by clause
through the protocol of docs/protocol.md, and report pass / fail / not supported."""
