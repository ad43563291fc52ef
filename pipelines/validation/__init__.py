"""`affectflow validate`: the schema-derived Great Expectations suites over an output folder."""
