"""Real training functions the demo, the tests and the docs use."""
