"""Fuzzing of the parsers that read what clients send (README "Fuzzing").

test_*.py      Hypothesis properties, run by `make test` (budget.py sets their size)
atheris_*.py   coverage-guided targets checking the same properties (harness.py runs them)
seeds.py       real mail and the SMTP smuggling / STARTTLS-injection streams they start from
accounts.py    a user database with cheap scrypt and an inline credential verifier
"""
