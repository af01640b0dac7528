"""Differential privacy: accountants and the one ledger, secure noise, mechanisms, analytics."""
