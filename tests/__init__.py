"""The tests: integration/ and python/ (pytest), unit/ (cmocka), harness/ (what they share)."""
