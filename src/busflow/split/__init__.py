"""Splitting: patient and same-frame grouping, split protocols, and the audit that proves no group crosses a role."""
