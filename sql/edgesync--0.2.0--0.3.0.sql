-- edgesync 0.2.0 -> 0.3.0: hardening (untrusted batches, values in
-- transit, last writer wins for deletes, clock bounds, blocked
-- transactions, roles and lifecycle, downstreams health).
-- One section per concern; each says what it changes.

-- == 1. untrusted batches ==
-- (nothing changes in SQL)

-- == 2. values in transit ==
-- (nothing yet)

-- == 3. last writer wins for deletes ==
-- (nothing yet)

-- == 4. the clock ==
-- (nothing yet)

-- == 5. blocked transactions ==
-- (nothing yet)

-- == 6. apply like PostgreSQL's own ==
-- (nothing yet)

-- == 7. roles and lifecycle ==
-- (nothing yet)

-- == 8. downstreams health ==
-- (nothing yet)
